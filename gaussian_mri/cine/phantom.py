"""A numerical short-axis cardiac cine (bSSFP-like contrast) with coils and noise.

The phantom is drawn in millimetres on a grid twice as fine as the output and averaged 2 x 2, so
tissue boundaries have partial-volume values. Image orientation: rows run anterior (top) to
posterior (bottom), columns run from the patient's right (left of the image) to the patient's left,
as in a radiological short-axis display. Contents:

* a body ellipse with skin, a subcutaneous fat ring (bright, as in bSSFP) and a chest-wall muscle
  layer; paraspinal muscles, a vertebral body with marrow texture, the spinal canal (bright CSF)
  and cord; the descending aorta (bright blood); the liver with hepatic vessels; two dark lungs
  with small bright vessels; mediastinal fat;
* the heart: the left ventricle (LV) with a bright blood pool, trabeculated endocardium and two
  papillary muscles, and a myocardium whose wall thickens in systole while the cavity shrinks (the
  myocardial area is nearly conserved, +6 % in systole from through-plane motion, so a 9.5 mm
  wall becomes ~13.5 mm); the crescent-shaped right ventricle (RV) with a thin free wall; and
  epicardial fat. The heart also translates and twists a little;
* every tissue carries smooth random texture at two scales (band-limited Gaussian noise), moving
  with the myocardium and blood in their own polar coordinates, static elsewhere;
* a smooth complex phase (static, a few radians across the field of view, plus a small flow phase
  in the LV blood that follows the cardiac cycle).

Everything outside the heart region is identical in every frame (``static_mask``).

K-space: ``kspace[t, c] = fft2c(coil_maps[c] * images[t]) + noise``, with the centred unitary FFT of
:mod:`gaussian_mri.mri.fft` and complex Gaussian noise of standard deviation
``noise * max|images|`` per sample (real and imaginary parts each ``noise_std / sqrt(2)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["SimulatedCine", "cardiac_contraction", "simulate_cine"]

_SUPER = 2  # supersampling factor of the drawing grid


@dataclass
class SimulatedCine:
    """Output of :func:`simulate_cine`. All arrays are NumPy.

    Attributes
    ----------
    images : ndarray, shape (frames, ny, nx), complex64
        Noise-free reference images (coil-combined, i.e. the object).
    coil_maps : ndarray, shape (coils, ny, nx), complex64
        Coil sensitivities, ``sum_c |c|^2 = 1`` everywhere.
    kspace : ndarray, shape (frames, coils, ky, kx), complex64
        Fully sampled multi-coil k-space including noise.
    body_mask : ndarray, shape (ny, nx), bool
        Inside the body outline.
    myocardium_mask : ndarray, shape (frames, ny, nx), bool
        LV myocardium and RV free wall (papillary muscles and trabeculae excluded).
    lv_blood_mask : ndarray, shape (frames, ny, nx), bool
        LV cavity (blood pool).
    static_mask : ndarray, shape (ny, nx), bool
        Body pixels that are identical in every frame (everything but the heart and a 2-pixel margin).
    pixel_spacing_mm : float
        Square pixel size in mm.
    frame_duration_ms : float
        Time between frames in ms (``RR / frames``).
    slice_thickness_mm : float
        Nominal slice thickness (header information only).
    noise_std : float
        Absolute standard deviation of the complex k-space noise per sample.
    contraction : ndarray, shape (frames,)
        Contraction state of each frame, 0 = end diastole, 1 = end systole.
    lv_wall_thickness_mm : ndarray, shape (frames,)
        Nominal (mean) LV wall thickness of each frame in mm.
    lv_cavity_radius_mm : ndarray, shape (frames,)
        Nominal LV endocardial radius of each frame in mm.
    meta : dict
        Parameters used.
    """

    images: np.ndarray
    coil_maps: np.ndarray
    kspace: np.ndarray
    body_mask: np.ndarray
    myocardium_mask: np.ndarray
    lv_blood_mask: np.ndarray
    static_mask: np.ndarray
    pixel_spacing_mm: float
    frame_duration_ms: float
    slice_thickness_mm: float
    noise_std: float
    contraction: np.ndarray
    lv_wall_thickness_mm: np.ndarray
    lv_cavity_radius_mm: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def frame_times_ms(self) -> np.ndarray:
        """Trigger time of each frame (ms after the R wave), shape (frames,)."""
        return np.arange(self.images.shape[0]) * self.frame_duration_ms

    @property
    def fov_mm(self) -> tuple[float, float, float]:
        """Field of view ``(x, y, slice thickness)`` in mm."""
        ny, nx = self.images.shape[1:]
        return (nx * self.pixel_spacing_mm, ny * self.pixel_spacing_mm, self.slice_thickness_mm)


def cardiac_contraction(t: np.ndarray | float) -> np.ndarray:
    """Contraction state over the cardiac cycle, 0 = end diastole, 1 = end systole.

    ``t`` is the fraction of the RR interval in [0, 1). Ejection until 0.35 RR, rapid filling until
    0.6, slow filling (diastasis) until 0.85, then the atrial kick back to end diastole. Continuous.
    """
    t = np.mod(np.asarray(t, dtype=np.float64), 1.0)
    c = np.empty_like(t)
    a = t < 0.35
    c[a] = 0.5 * (1 - np.cos(np.pi * t[a] / 0.35))
    b = (t >= 0.35) & (t < 0.6)
    c[b] = 0.15 + 0.85 * 0.5 * (1 + np.cos(np.pi * (t[b] - 0.35) / 0.25))
    d = (t >= 0.6) & (t < 0.85)
    c[d] = 0.15 * (1 - 0.3 * (t[d] - 0.6) / 0.25)
    e = t >= 0.85
    c[e] = 0.105 * 0.5 * (1 + np.cos(np.pi * (t[e] - 0.85) / 0.15))
    return c


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _texture(rng: np.random.Generator, shape: tuple[int, ...], sigma: float, wrap: bool = False) -> np.ndarray:
    """Band-limited Gaussian noise, zero mean, unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap" if wrap else "reflect")
    return (noise - noise.mean()) / (noise.std() + 1e-12)


def _ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float = 0.0
) -> np.ndarray:
    """Normalised radius of an ellipse (<= 1 inside); ``angle`` in radians."""
    ca, sa = math.cos(angle), math.sin(angle)
    u = (x - cx) * ca + (y - cy) * sa
    v = -(x - cx) * sa + (y - cy) * ca
    return np.sqrt((u / a) ** 2 + (v / b) ** 2)


def _pool(a: np.ndarray) -> np.ndarray:
    """Average ``_SUPER x _SUPER`` blocks of the last two axes."""
    *lead, h, w = a.shape
    return a.reshape(*lead, h // _SUPER, _SUPER, w // _SUPER, _SUPER).mean(axis=(-3, -1))


def _discs(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    region: np.ndarray,
    n: int,
    r_min: float,
    r_max: float,
) -> np.ndarray:
    """Union of ``n`` random discs (radius in mm) centred inside ``region``."""
    out = np.zeros(x.shape, dtype=bool)
    iy, ix = np.nonzero(region)
    if iy.size == 0:
        return out
    for k in rng.choice(iy.size, size=min(n, iy.size), replace=False):
        r = rng.uniform(r_min, r_max)
        out |= (x - x[iy[k], ix[k]]) ** 2 + (y - y[iy[k], ix[k]]) ** 2 <= r * r
    return out


# --------------------------------------------------------------------------------------------------
# the phantom
# --------------------------------------------------------------------------------------------------
def simulate_cine(
    *,
    n_frames: int = 24,
    ny: int = 160,
    nx: int = 192,
    n_coils: int = 12,
    noise: float = 0.02,
    seed: int = 0,
    pixel_spacing_mm: float = 1.8,
    rr_ms: float = 960.0,
    slice_thickness_mm: float = 8.0,
    supersample: int = 1,
) -> SimulatedCine:
    """Simulate a multi-coil short-axis cardiac cine with a known ground truth.

    Parameters
    ----------
    n_frames : int
        Cardiac frames over one RR interval (>= 2).
    ny, nx : int
        Image size (rows = anterior-posterior, columns = right-left), even, >= 64. The default
        160 x 192 at 1.8 mm covers a 288 x 346 mm field of view, as a clinical cine.
    n_coils : int
        Number of receive coils (>= 1).
    noise : float
        Standard deviation of the complex Gaussian k-space noise per sample, relative to the largest
        reference image magnitude (0 for noise-free data). With the unitary FFT the per-pixel image
        noise of each coil has the same standard deviation.
    seed : int
        Seed of every random element (textures, vessels, coil maps, phase, noise).
    pixel_spacing_mm : float
        Pixel size in mm (anatomy sizes are in mm, so a different spacing zooms the anatomy).
    rr_ms : float
        RR interval in ms; ``frame_duration_ms = rr_ms / n_frames``.
    slice_thickness_mm : float
        Slice thickness stored in the output (not simulated).
    supersample : int
        1: the k-space is ``fft2c`` of the images on the output grid (fast; but a model fitted through
        the same ``fft2c`` on that grid then meets data it can represent exactly, an "inverse crime").
        ``s > 1``: the object and the coil maps are drawn on a grid ``s`` times finer (the same
        anatomy and maps), each coil's fine k-space is cropped to the output size, and ``images`` is
        the fine object band-limited the same way: data with the detail and the truncation of a real
        acquisition. Costs about ``s^2`` times the time and memory of the drawing.

    Returns
    -------
    SimulatedCine
    """
    from ..mri.kspace_io import simulate_coil_maps

    if int(n_frames) != n_frames or n_frames < 2:
        raise ValueError(f"n_frames must be an integer >= 2, got {n_frames}")
    if ny < 64 or nx < 64 or ny % 2 or nx % 2:
        raise ValueError(f"ny and nx must be even and >= 64, got ny={ny}, nx={nx}")
    if noise < 0 or not math.isfinite(noise):
        raise ValueError(f"noise must be >= 0, got {noise}")
    if pixel_spacing_mm <= 0 or rr_ms <= 0:
        raise ValueError(f"pixel_spacing_mm and rr_ms must be > 0, got {pixel_spacing_mm}, {rr_ms}")
    if isinstance(supersample, bool) or int(supersample) != supersample or supersample < 1:
        raise ValueError(f"supersample must be an integer >= 1, got {supersample!r}")
    if supersample > 1:
        return _supersampled(n_frames, ny, nx, n_coils, noise, seed, pixel_spacing_mm, rr_ms, slice_thickness_mm,
                             int(supersample))
    rng = np.random.default_rng(seed)
    sp = pixel_spacing_mm / _SUPER
    hy, hx = ny * _SUPER, nx * _SUPER
    # pixel centres in mm, origin at the image centre (index n // 2 of the output grid)
    ys = (np.arange(hy) + 0.5) * sp - (ny // 2 + 0.5) * pixel_spacing_mm
    xs = (np.arange(hx) + 0.5) * sp - (nx // 2 + 0.5) * pixel_spacing_mm
    y, x = np.meshgrid(ys, xs, indexing="ij")
    # anatomy is scaled to the field of view when it is smaller than the default one
    scale = min(1.0, ny * pixel_spacing_mm / 288.0, nx * pixel_spacing_mm / 345.6)
    xn, yn = x / scale, y / scale  # anatomy coordinates (mm at scale 1)
    px = sp / scale  # drawing-pixel size in anatomy mm

    coarse = _texture(rng, (hy, hx), 5.0 / px)  # ~5 mm blobs
    fine = _texture(rng, (hy, hx), 0.9 / px)  # ~1 mm grain
    medium = _texture(rng, (hy, hx), 2.0 / px)

    # ---------------- static background ----------------
    theta_b = np.arctan2(yn - 5, xn)
    wobble = 1 + 0.025 * np.cos(2 * theta_b + rng.uniform(0, 6.3)) + 0.015 * np.cos(3 * theta_b + rng.uniform(0, 6.3))
    body_r = _ellipse(xn, yn, 0, 5, 150, 108) / wobble
    body = body_r <= 1.0
    bg = np.zeros((hy, hx))
    # depth below the skin in mm (approximate, from the normalised radius)
    depth = (1 - body_r) * 108
    skin = body & (depth < 2.0)
    fat_thick = 12 + 4 * np.cos(theta_b + 1.2) + 1.5 * np.cos(5 * theta_b + 2.0) + 0.8 * coarse
    fat = body & ~skin & (depth < fat_thick)
    bg[skin] = 0.45
    bg[fat] = 0.85 * (1 + 0.06 * coarse[fat] + 0.04 * fine[fat])
    muscle_thick = fat_thick + 11 + 5 * np.clip(-np.sin(theta_b), 0, 1)  # thicker pectorals anteriorly
    muscle = body & ~skin & ~fat & (depth < muscle_thick)
    muscle_tex = 1 + 0.08 * medium + 0.06 * fine + 0.05 * np.sin(0.9 * (xn * 0.8 + yn * 0.6) + 4 * coarse)
    bg[muscle] = 0.30 * muscle_tex[muscle]
    cavity = body & ~skin & ~fat & ~muscle
    # mediastinal / thoracic cavity tissue (connective tissue and fat)
    bg[cavity] = 0.55 * (1 + 0.10 * coarse[cavity] + 0.06 * fine[cavity])
    # lungs: dark, with small bright vessels
    lung_r = _ellipse(xn, yn, -72, 12, 44, 66, 0.1) <= 1
    lung_l = _ellipse(xn, yn, 82, 14, 40, 62, -0.15) <= 1
    lungs = cavity & (lung_r | lung_l)
    bg[lungs] = 0.04 * (1 + 0.5 * medium[lungs])
    vessels = _discs(rng, xn, yn, lungs, 40, 0.8, 2.6) & lungs
    bg[vessels] = 0.40 * (1 + 0.1 * fine[vessels])
    # liver (patient's right, posterior-inferior part of the slice) with hepatic vessels
    liver = cavity & (_ellipse(xn, yn, -62, 58, 56, 34, 0.25) <= 1)
    bg[liver] = 0.36 * (1 + 0.07 * coarse[liver] + 0.05 * fine[liver])
    hep = _discs(rng, xn, yn, liver, 14, 1.0, 3.5) & liver
    bg[hep] = 0.75 * (1 + 0.05 * fine[hep])
    # spine: vertebral body, spinal canal, cord, posterior elements, paraspinal muscles
    para = body & ~skin & ~fat & ((_ellipse(xn, yn, -30, 95, 19, 12) <= 1) | (_ellipse(xn, yn, 30, 95, 19, 12) <= 1))
    bg[para] = 0.30 * muscle_tex[para]
    vert = _ellipse(xn, yn, 0, 76, 17, 15) <= 1
    cortex = vert & (_ellipse(xn, yn, 0, 76, 15, 13) > 1)
    bg[vert] = 0.50 * (1 + 0.15 * medium[vert] + 0.12 * fine[vert])
    bg[cortex] = 0.08
    lamina = (_ellipse(xn, yn, 0, 101, 13, 5) <= 1) & ~(_ellipse(xn, yn, 0, 99, 7.5, 7.5) <= 1)
    bg[lamina] = 0.12
    canal = _ellipse(xn, yn, 0, 98, 7, 7) <= 1
    bg[canal] = 0.90
    cord = _ellipse(xn, yn, 0, 98, 4, 3.5) <= 1
    bg[cord] = 0.40
    # descending aorta (patient's left of the spine), wall + bright blood
    aorta_wall = _ellipse(xn, yn, 24, 58, 12.5, 12.5) <= 1
    aorta = _ellipse(xn, yn, 24, 58, 11, 11) <= 1
    bg[aorta_wall] = 0.25
    bg[aorta] = 0.92 * (1 + 0.03 * coarse[aorta])
    # oesophagus
    oes = _ellipse(xn, yn, 6, 50, 6, 5) <= 1
    bg[oes] = 0.30
    bg[~body] = 0.0

    # smooth static complex phase: low-order polynomial with random coefficients
    u, v = x / (hx * sp / 2), y / (hy * sp / 2)
    cph = rng.uniform(-1, 1, 6)
    phase = (
        0.8 * cph[0] * u + 0.8 * cph[1] * v + 0.6 * cph[2] * u * v
        + 0.5 * cph[3] * u**2 + 0.5 * cph[4] * v**2 + math.pi * cph[5]
    )

    # ---------------- heart geometry over the cycle ----------------
    t_frac = np.arange(n_frames) / n_frames
    c_all = cardiac_contraction(t_frac)
    r_endo_d, wall_d = 24.0, 9.5
    myo_area_d = math.pi * ((r_endo_d + wall_d) ** 2 - r_endo_d**2)
    # endocardial trabeculation pattern and papillary muscle angles
    n_harm = 12
    harm_k = rng.integers(9, 28, n_harm)
    harm_p = rng.uniform(0, 2 * math.pi, n_harm)
    harm_a = rng.uniform(0.5, 1.0, n_harm)
    spoke_k = int(rng.integers(14, 20))
    spoke_p = rng.uniform(0, 2 * math.pi)
    # texture fields in the heart's own (angle, normalised depth) coordinates
    n_th, n_s = 720, 64
    myo_tex_c = _texture(rng, (n_s, n_th), (2.0, 12.0), wrap=True)
    myo_tex_f = _texture(rng, (n_s, n_th), (0.8, 3.0), wrap=True)
    blood_tex = _texture(rng, (n_s, n_th), (4.0, 20.0), wrap=True)
    rv_tex = _texture(rng, (n_s, n_th), (3.0, 15.0), wrap=True)

    def polar_sample(field_: np.ndarray, theta: np.ndarray, s: np.ndarray) -> np.ndarray:
        ti = np.mod(theta, 2 * math.pi) / (2 * math.pi) * n_th
        si = np.clip(s, 0, 1) * (n_s - 1)
        return ndimage.map_coordinates(field_, [si, ti], order=1, mode="grid-wrap")

    # the heart is drawn on a crop of the grid (its bounding box over the cycle plus a margin),
    # composited over the static background
    rows = np.nonzero((ys / scale > -75) & (ys / scale < 55))[0]
    cols = np.nonzero((xs / scale > -60) & (xs / scale < 80))[0]
    r0, r1 = rows[0] - rows[0] % _SUPER, rows[-1] + 1 + (-(rows[-1] + 1)) % _SUPER
    c0, c1 = cols[0] - cols[0] % _SUPER, cols[-1] + 1 + (-(cols[-1] + 1)) % _SUPER
    crop = (slice(r0, r1), slice(c0, c1))
    xc, yc = xn[crop], yn[crop]
    phase_c, fine_c, coarse_c = phase[crop], fine[crop], coarse[crop]
    bg_img = bg * np.exp(1j * phase)
    static_frame = _pool(bg_img)

    images = np.empty((n_frames, ny, nx), dtype=np.complex64)
    myocardium_mask = np.zeros((n_frames, ny, nx), dtype=bool)
    lv_blood_mask = np.zeros((n_frames, ny, nx), dtype=bool)
    heart_support = np.zeros((hy, hx), dtype=bool)
    wall_nominal = np.empty(n_frames)
    cavity_nominal = np.empty(n_frames)
    spoke_len = rng.uniform(0.03, 0.16, spoke_k)
    pool_crop = (slice(r0 // _SUPER, r1 // _SUPER), slice(c0 // _SUPER, c1 // _SUPER))

    for f in range(n_frames):
        c = float(c_all[f])
        lvx, lvy = 30.0 - 2.5 * c, -6.0 + 2.0 * c  # small systolic translation (mm)
        twist = math.radians(6.0) * c
        r_endo = r_endo_d * (1 - 0.38 * c)
        r_epi = math.sqrt(r_endo**2 + myo_area_d * (1 + 0.06 * c) / math.pi)
        wall_nominal[f], cavity_nominal[f] = r_epi - r_endo, r_endo
        dx, dy = xc - lvx, yc - lvy
        r = np.hypot(dx, dy)
        th = np.arctan2(dy, dx)
        th_rel = th - twist
        trab = sum(a * np.sin(k * th_rel + p) for a, k, p in zip(harm_a, harm_k, harm_p)) / np.sum(harm_a)
        r_endo_th = r_endo * (1 + 0.045 * trab)
        r_epi_th = r_epi * (1 + 0.01 * np.sin(3 * th_rel + 1.0))
        lv_myo = (r > r_endo_th) & (r <= r_epi_th)
        lv_cav = r <= r_endo_th
        # trabecular strands of random length reaching into the cavity, and two papillary muscles
        spoke_pos = np.mod(th_rel * spoke_k + spoke_p, 2 * math.pi * spoke_k) / (2 * math.pi)
        spoke = np.floor(spoke_pos).astype(int) % spoke_k
        strands = (
            lv_cav
            & (r > r_endo_th * (1 - spoke_len[spoke] * (1 + 0.3 * c)))
            & (np.sin(spoke_k * th_rel + spoke_p) > 0.6)
        )
        pap = np.zeros_like(lv_cav)
        for ang, rad in ((math.radians(-35.0), 5.0), (math.radians(115.0), 4.5)):
            pr = r_endo - rad * (1.0 - 0.15 * c) - 0.5
            pcx = lvx + pr * math.cos(ang + twist)
            pcy = lvy + pr * math.sin(ang + twist)
            pap |= (xc - pcx) ** 2 + (yc - pcy) ** 2 <= (rad * (1 + 0.25 * c)) ** 2
        pap &= lv_cav
        blood = lv_cav & ~strands & ~pap
        # right ventricle: crescent wrapped around the septum (anterior / patient's right)
        rv_scale = 1 - 0.2 * c
        rvx, rvy, rv_ang = lvx - 19.0 + 3.0 * c, lvy - 9.0, math.radians(-28)
        rv_a, rv_b = 41 * rv_scale, 27 * rv_scale
        rv_r = _ellipse(xc, yc, rvx, rvy, rv_a, rv_b, rv_ang)
        epi_lv = r <= r_epi_th
        rv_cav = (rv_r <= 1.0) & (r > r_epi_th + 0.5)
        rv_wall_mm = 3.5 * (1 + 0.25 * c)
        rv_outer = _ellipse(xc, yc, rvx, rvy, rv_a + rv_wall_mm, rv_b + rv_wall_mm, rv_ang) <= 1.0
        rv_wall = rv_outer & ~rv_cav & ~epi_lv
        heart = epi_lv | rv_outer
        # epicardial fat: thicker at the AV groove / RV-LV junctions
        fat_w = 1.5 + 3.5 * np.clip(np.cos(2 * (th - 0.3)), 0, 1)
        dist_out = ndimage.distance_transform_edt(~heart) * px
        epi_fat = (~heart) & (dist_out <= fat_w)
        region = heart | epi_fat
        if region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any():
            raise RuntimeError("internal error: the heart leaves its drawing box")
        heart_support[crop] |= region

        s_myo = (r - r_endo_th) / np.maximum(r_epi_th - r_endo_th, 1e-6)
        val = np.zeros(xc.shape)
        myo_t = 1 + 0.10 * polar_sample(myo_tex_c, th_rel, s_myo) + 0.06 * polar_sample(myo_tex_f, th_rel, s_myo)
        val[lv_myo] = 0.28 * myo_t[lv_myo]
        blood_t = 1 + 0.04 * polar_sample(blood_tex, th_rel, r / r_endo)
        val[blood] = 1.0 * blood_t[blood]
        val[strands | pap] = 0.30 * myo_t[strands | pap]
        rv_t = 1 + 0.05 * polar_sample(rv_tex, th - twist, np.clip(rv_r, 0, 1))
        val[rv_cav] = 0.95 * rv_t[rv_cav]
        val[rv_wall] = 0.28 * (1 + 0.08 * fine_c[rv_wall])
        val[epi_fat] = 0.80 * (1 + 0.06 * coarse_c[epi_fat] + 0.04 * fine_c[epi_fat])
        flow_phase = np.where(blood, 0.25 * math.sin(2 * math.pi * t_frac[f]), 0.0)
        img_c = np.where(region, val * np.exp(1j * (phase_c + flow_phase)), bg_img[crop])
        frame = static_frame.copy()
        frame[pool_crop] = _pool(img_c)
        images[f] = frame
        myocardium_mask[f][pool_crop] = _pool((lv_myo | rv_wall).astype(np.float32)) >= 0.5
        lv_blood_mask[f][pool_crop] = _pool((blood | strands | pap).astype(np.float32)) >= 0.5

    if not np.all(heart_support <= body):
        raise RuntimeError("internal error: the heart leaves the body; the field of view is too small")

    body_mask = _pool(body.astype(np.float32)) >= 0.5
    heart_px = _pool(heart_support.astype(np.float32)) > 0
    static_mask = body_mask & ~ndimage.binary_dilation(heart_px, iterations=2)

    coil_maps = simulate_coil_maps(n_coils, ny, nx, seed=seed + 1)
    kspace = _coil_kspace(images, coil_maps)
    noise_std = float(noise) * float(np.abs(images).max())
    if noise_std > 0:
        nrng = np.random.default_rng(seed + 2)
        kspace += (
            (nrng.standard_normal(kspace.shape) + 1j * nrng.standard_normal(kspace.shape))
            * (noise_std / math.sqrt(2))
        ).astype(np.complex64)
    return SimulatedCine(
        images=images,
        coil_maps=coil_maps,
        kspace=kspace,
        body_mask=body_mask,
        myocardium_mask=myocardium_mask,
        lv_blood_mask=lv_blood_mask,
        static_mask=static_mask,
        pixel_spacing_mm=float(pixel_spacing_mm),
        frame_duration_ms=float(rr_ms) / n_frames,
        slice_thickness_mm=float(slice_thickness_mm),
        noise_std=noise_std,
        contraction=c_all,
        lv_wall_thickness_mm=wall_nominal * scale,
        lv_cavity_radius_mm=cavity_nominal * scale,
        meta={"seed": seed, "noise": noise, "rr_ms": rr_ms, "anatomy_scale": scale, "n_coils": n_coils},
    )


def _supersampled(n_frames, ny, nx, n_coils, noise, seed, pixel_spacing_mm, rr_ms, slice_thickness_mm, s) -> SimulatedCine:
    """:func:`simulate_cine` drawn ``s`` times finer, k-space cropped to ``ny x nx`` (see ``supersample``)."""
    import torch

    from ..mri.fft import crop_kspace, fft2c, ifft2c

    fine = simulate_cine(n_frames=n_frames, ny=s * ny, nx=s * nx, n_coils=n_coils, noise=0.0, seed=seed,
                         pixel_spacing_mm=pixel_spacing_mm / s, rr_ms=rr_ms, slice_thickness_mm=slice_thickness_mm)
    obj = torch.from_numpy(fine.images)
    images = ifft2c(crop_kspace(fft2c(obj), ny, nx)).numpy().astype(np.complex64)
    # one coil at a time (the fine coil images of all coils would need s^2 times the k-space memory)
    kspace = np.stack([crop_kspace(fft2c(obj * torch.from_numpy(c)), ny, nx).numpy() for c in fine.coil_maps], 1)
    # fine pixel s * p is coarse pixel p (centred grids): the maps are the same continuous maps
    coil_maps = np.ascontiguousarray(fine.coil_maps[:, ::s, ::s])

    def at_coarse(m: np.ndarray) -> np.ndarray:  # the fine mask at the coarse pixel centres (fine pixel s p)
        return np.ascontiguousarray(m[..., ::s, ::s])

    body_mask = at_coarse(fine.body_mask)
    moving = body_mask & ~at_coarse(fine.static_mask)
    static_mask = body_mask & ~ndimage.binary_dilation(moving, iterations=2)  # 2-pixel margin, as above
    noise_std = float(noise) * float(np.abs(images).max())
    if noise_std > 0:
        nrng = np.random.default_rng(seed + 2)
        kspace += (
            (nrng.standard_normal(kspace.shape) + 1j * nrng.standard_normal(kspace.shape)) * (noise_std / math.sqrt(2))
        ).astype(np.complex64)
    return SimulatedCine(
        images=images,
        coil_maps=coil_maps,
        kspace=kspace.astype(np.complex64),
        body_mask=body_mask,
        myocardium_mask=at_coarse(fine.myocardium_mask),
        lv_blood_mask=at_coarse(fine.lv_blood_mask),
        static_mask=static_mask,
        pixel_spacing_mm=float(pixel_spacing_mm),
        frame_duration_ms=fine.frame_duration_ms,
        slice_thickness_mm=float(slice_thickness_mm),
        noise_std=noise_std,
        contraction=fine.contraction,
        lv_wall_thickness_mm=fine.lv_wall_thickness_mm,
        lv_cavity_radius_mm=fine.lv_cavity_radius_mm,
        meta={**fine.meta, "noise": noise, "supersample": s},
    )


def _coil_kspace(images: np.ndarray, coil_maps: np.ndarray) -> np.ndarray:
    """``fft2c(coil_maps * images)``: (frames, ny, nx) x (coils, ny, nx) -> (frames, coils, ky, kx)."""
    import torch

    from ..mri.fft import fft2c

    coil_images = torch.from_numpy(coil_maps)[None] * torch.from_numpy(images)[:, None]
    return fft2c(coil_images).numpy()
