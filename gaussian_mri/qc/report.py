"""The QC report of one SVR reconstruction: ``<result_dir>/qc/report.html`` plus PNGs beside it.

What a reader checks on the page, top to bottom (the usual visual QC of slice-to-volume
reconstructions: orthogonal views of the volume, the slices the robust weighting rejected, the
estimated motion and the residuals per slice):

* a summary line (stacks, slices used and down-weighted, time) and the engine's warnings;
* orthogonal views of ``recon.nii.gz`` through the centroid of ``recon_mask.nii.gz``, resampled onto
  an RAS-aligned grid and shown in the radiological convention (patient right on the screen's
  left; sagittal views anterior on the right, as in 3D Slicer), with the output mask's outline, the
  orientation letters, a scale bar and the grid's voxel size;
* per input stack a table row (orientation, grid, slices used, weights, residuals, motion, the stack's
  pose relative to its header) and a montage of the slices that entered the fit, each framed in the
  colour of its robust weight, on one grey window per stack (a signal drop-out looks dark);
* per slice, against the acquisition order when the stack's BIDS sidecar has ``SliceTiming`` (else
  against the slice index ``k``, and the page says so): the rotation angle and the displacement of
  the brain centre (in that slice's plane) relative to the stack's mean pose (weighted by the slice
  weights), and the relative residual, coloured by weight;
* the timings of ``report.json``, the configuration, the renderer and the engine version, and the
  full per-slice table (collapsed).

``slices.tsv`` transforms are world (RAS mm) transforms of each slice from its header pose (stack
pre-alignment and fitted motion composed), :meth:`gaussian_mri.geometry.SliceGeometry.moved`
convention; the residual is the masked squared error over the masked signal energy of the slice
(``gaussian_mri/svr/recon.py``, ``_residual_stats``).

The page has no script and no remote resource: inline CSS, system fonts, PNGs in the same folder.
The folder is built under a temporary name beside ``qc/`` and renamed into place, so ``qc/`` is
either the complete new report or (briefly, and after a failure) the previous one or absent.
"""

from __future__ import annotations

import csv
import datetime
import html
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._atomic import atomic_path, atomic_write_text
from .._progress import format_duration

__all__ = ["CSS", "QC_DIR", "REPORT_NAME", "THUMBNAIL_NAME", "write_report"]

log = logging.getLogger(__name__)

QC_DIR = "qc"  #: folder of the report inside the result folder
REPORT_NAME = "report.html"
THUMBNAIL_NAME = "thumbnail.png"  #: small axial view, shown by the cohort index

#: Colour map of the robust slice weights (ColorBrewer RdYlBu: red = rejected, blue = fully used;
#: readable with the common colour-vision deficiencies).
WEIGHT_CMAP = "RdYlBu"
LOW_WEIGHT = 0.5  #: slices below this weight are counted and flagged as down-weighted

_PNG_META = {"Software": None}  # no tool URL in the PNG text chunks

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #1d2430; background: #f4f5f7; line-height: 1.4; }
main { max-width: 1120px; margin: 0 auto; padding: 16px 24px 40px; background: #fff; }
h1 { font-size: 1.5em; margin: 0.3em 0 0.1em; }
h2 { font-size: 1.2em; margin: 1.6em 0 0.4em; border-bottom: 1px solid #d5d9e0; padding-bottom: 0.2em; }
h3 { font-size: 1.0em; margin: 1.2em 0 0.3em; }
p.sub, .note { color: #5a6474; font-size: 0.9em; }
.summary { display: flex; flex-wrap: wrap; gap: 8px; margin: 10px 0; }
.summary div { background: #eef1f5; border-radius: 6px; padding: 6px 12px; }
.summary b { display: block; font-size: 1.25em; }
.warn { background: #fff4d6; border-left: 4px solid #e0a800; padding: 6px 12px; margin: 4px 0; }
.ok { color: #1b6e33; }
figure { margin: 8px 0 16px; }
figure img { max-width: 100%; height: auto; border: 1px solid #d5d9e0; }
figcaption { color: #5a6474; font-size: 0.88em; margin-top: 4px; }
table { border-collapse: collapse; font-size: 0.88em; margin: 6px 0; }
th, td { border: 1px solid #d5d9e0; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.low td { background: #fde3de; }
#stack-table { font-size: 0.8em; }
#stack-table td { white-space: nowrap; padding: 3px 6px; }
#stack-table th { padding: 3px 6px; }
div.scroll { overflow-x: auto; }
table.kv td:nth-child(odd) { color: #5a6474; }
.cols { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
details summary { cursor: pointer; color: #2457a6; }
footer { margin-top: 32px; color: #5a6474; font-size: 0.85em; }
.status-ok { background: #d8f0dd; color: #1b6e33; }
.status-failed { background: #fde3de; color: #a3271b; }
.status-skipped { background: #eceff3; color: #5a6474; }
span.badge { border-radius: 4px; padding: 1px 8px; font-weight: 600; }
#index { width: 100%; }
#index td { vertical-align: middle; }
.summary div.status-ok, .summary div.status-failed, .summary div.status-skipped { font-weight: 600; }
img.thumb { width: 96px; height: auto; border: 1px solid #d5d9e0; display: block; }
th.sortable { cursor: pointer; white-space: nowrap; }
th.sortable::after { content: " \\2195"; color: #9aa3b0; }
"""

#: Screen directions (RAS) of the three display planes: (to the screen's right, up the screen).
#: Radiological convention for axial and coronal (patient right on the left), anterior to the
#: right in sagittal views (as in 3D Slicer).
_PLANES = {
    "axial": (np.array([-1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])),
    "coronal": (np.array([-1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])),
    "sagittal": (np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])),
}
_AXIS_NAMES = ("sagittal", "coronal", "axial")  # plane named by the RAS axis of its normal
_LETTERS = {(0, 1): "R", (0, -1): "L", (1, 1): "A", (1, -1): "P", (2, 1): "S", (2, -1): "I"}


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


@dataclass
class SliceTable:
    """The columns of ``slices.tsv``: one row per slice that entered the fit."""

    stack: np.ndarray  # (n,) int
    slice: np.ndarray  # (n,) int, k in the stack file
    weight: np.ndarray  # (n,) float
    residual: np.ndarray  # (n,) float
    transform: np.ndarray  # (n, 4, 4) world transform from the header pose

    def of(self, stack: int) -> np.ndarray:
        """Row indices of ``stack``, sorted by slice index."""
        rows = np.flatnonzero(self.stack == stack)
        return rows[np.argsort(self.slice[rows], kind="stable")]


def read_slices_tsv(path: str | os.PathLike) -> SliceTable:
    """Read ``slices.tsv`` as written by :func:`gaussian_mri.svr.io.save_result`."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t") if r]
    if not rows:
        raise ValueError(f"{path} is empty")
    head = rows[0]
    need = ["stack", "slice", "weight", "residual"] + [f"r{a}{b}" for a in (1, 2, 3) for b in (1, 2, 3)] + ["t1", "t2", "t3"]
    missing = [c for c in need if c not in head]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {missing}; is it a slices.tsv of gaussian-mri svr?")
    col = {c: head.index(c) for c in need}
    body = rows[1:]
    num = lambda c: np.array([float(r[col[c]]) for r in body], dtype=np.float64)
    n = len(body)
    t = np.tile(np.eye(4), (n, 1, 1))
    for a in range(3):
        for b in range(3):
            t[:, a, b] = num(f"r{a + 1}{b + 1}")
        t[:, a, 3] = num(f"t{a + 1}")
    return SliceTable(num("stack").astype(int), num("slice").astype(int), num("weight"), num("residual"), t)


def _sidecar(path: Path) -> dict:
    """The BIDS JSON sidecar of an image file (:func:`gaussian_mri.image.sidecar_path`), or ``{}``."""
    from ..image import sidecar_path

    try:
        doc = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def acquisition_rank(path: Path, n_slices: int) -> np.ndarray | None:
    """Acquisition position of each slice ``k`` (0 = first acquired) from the sidecar's ``SliceTiming``,
    or ``None`` when unknown (no sidecar, no ``SliceTiming``, or not one finite time per slice)."""
    timing = _sidecar(path).get("SliceTiming")
    if not isinstance(timing, list) or len(timing) != n_slices:
        return None
    try:
        t = np.asarray(timing, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(t).all():
        return None
    return np.argsort(np.argsort(t, kind="stable"), kind="stable")


# --------------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------------


def rotation_deg(r: np.ndarray) -> np.ndarray:
    """Rotation angle (degrees) of rotation matrices ``(..., 3, 3)``."""
    cos = (np.trace(r, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def mean_pose(t: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted mean of rigid transforms ``(n, 4, 4)``: the rotation closest (Frobenius) to the weighted
    mean rotation matrix, the weighted mean translation."""
    w = np.maximum(np.asarray(w, np.float64), 1e-6)
    w = w / w.sum()
    m = np.einsum("n,nab->ab", w, t[:, :3, :3])
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    out = np.eye(4)
    out[:3, :3] = u @ np.diag([1.0, 1.0, d]) @ vt
    out[:3, 3] = np.einsum("n,na->a", w, t[:, :3, 3])
    return out


def slice_motion(t: np.ndarray, w: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Motion of each slice relative to the stack's weighted mean pose.

    ``t`` (n, 4, 4) slice transforms, ``w`` (n,) weights, ``points`` (n, 3) a point of each slice (RAS
    mm; the brain centre in that slice's plane). Returns ``(rotation_deg (n,), displacement_mm (n,),
    mean pose (4, 4))``: the angle of ``R_mean^T R_i`` and ``|T_i p_i - T_mean p_i|``.
    """
    m = mean_pose(t, w)
    rel = np.einsum("ba,nbc->nac", m[:3, :3], t[:, :3, :3])
    p1 = np.concatenate([points, np.ones((len(points), 1))], 1)
    moved = np.einsum("nab,nb->na", t, p1)[:, :3]
    at_mean = p1 @ m.T
    return rotation_deg(rel), np.linalg.norm(moved - at_mean[:, :3], axis=1), m


def _plane_name(direction: np.ndarray) -> tuple[str, float]:
    """Name of the plane of a stack (by the RAS axis closest to its slice normal) and the normal's angle
    to that axis (degrees)."""
    normal = direction[:, 2] / np.linalg.norm(direction[:, 2])
    axis = int(np.argmax(np.abs(normal)))
    return _AXIS_NAMES[axis], float(np.degrees(np.arccos(min(1.0, abs(normal[axis])))))


def _to_screen(plane, u_col, u_row, sp_col, sp_row, right, up):
    """Flip/transpose a 2D array (rows along ``u_row``, columns along ``u_col``, RAS unit vectors) so that
    its columns run towards ``right`` and its rows down the screen (``-up``). Returns the array and
    the (horizontal, vertical) pixel sizes in mm."""
    if abs(u_col @ right) >= abs(u_row @ right):
        a, h, v, sh, sv = plane, u_col, u_row, sp_col, sp_row
    else:
        a, h, v, sh, sv = plane.T, u_row, u_col, sp_row, sp_col
    if h @ right < 0:
        a = a[:, ::-1]
    if v @ up > 0:  # row 0 is at the top of the screen
        a = a[::-1, :]
    return np.ascontiguousarray(a), float(sh), float(sv)


def _edge_letters(right: np.ndarray, up: np.ndarray) -> dict[str, str]:
    """Orientation letters at the screen edges for the screen directions ``right`` and ``up``."""

    def letter(v):
        a = int(np.argmax(np.abs(v)))
        return _LETTERS[(a, 1 if v[a] > 0 else -1)]

    return {"right": letter(right), "left": letter(-right), "top": letter(up), "bottom": letter(-up)}


def _window(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    hi = float(np.percentile(values, 99.5))
    lo = min(0.0, float(np.percentile(values, 0.5)))
    if hi <= lo:
        hi = float(values.max()) if values.max() > lo else lo + 1.0
    return lo, hi


def _halo():
    """A dark outline that keeps light labels readable on bright image content."""
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=2.2, foreground="black")]


def _scale_bar_mm(extent_mm: float) -> int:
    for length in (5, 10, 20, 50, 100):
        if length >= 0.12 * extent_mm:
            return length
    return 200


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def _save(fig, path: Path, plt) -> None:
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=100, metadata=_PNG_META)
    finally:
        plt.close(fig)


def _ras_grid(volume, mask_arr: np.ndarray, margin_mm: float = 3.0, max_size: int = 320):
    """An RAS-aligned isotropic grid over the mask (whole volume when the mask is empty)."""
    from ..image import Image

    idx = np.argwhere(mask_arr) if mask_arr.any() else np.argwhere(np.ones(mask_arr.shape, bool))
    lo_i, hi_i = idx.min(0)[::-1] - 0.5, idx.max(0)[::-1] + 0.5  # (i, j, k)
    corners = np.array([[x, y, z, 1.0] for x in (lo_i[0], hi_i[0]) for y in (lo_i[1], hi_i[1]) for z in (lo_i[2], hi_i[2])])
    world = (corners @ volume.affine.T)[:, :3]
    lo, hi = world.min(0) - margin_mm, world.max(0) + margin_mm
    res = float(min(volume.spacing))
    res = max(res, float((hi - lo).max()) / max_size)
    n = np.maximum(np.ceil((hi - lo) / res).astype(int), 1)
    affine = np.diag([res, res, res, 1.0])
    affine[:3, 3] = lo + res / 2
    return Image(np.zeros((n[2], n[1], n[0]), np.float32), affine), res


def draw_views(volume, mask, path: Path, thumb_path: Path, plt) -> dict:
    """Orthogonal views through the mask centroid (RAS display grid); also a small axial thumbnail."""
    from ..resample import resample_to_reference

    mask_arr = np.asarray(mask.data) > 0
    grid, res = _ras_grid(volume, mask_arr)
    vol = np.asarray(resample_to_reference(volume, grid, order=1).data, np.float32)
    msk = np.asarray(resample_to_reference(mask, grid, order=0).data) > 0
    if mask_arr.any():
        kji = np.argwhere(mask_arr).mean(0)
        centre = volume.affine @ np.array([kji[2], kji[1], kji[0], 1.0])
    else:
        centre = volume.affine @ np.array([*(np.array(volume.shape[::-1]) - 1) / 2.0, 1.0])
    c = np.clip(np.round((centre[:3] - grid.affine[:3, 3]) / res).astype(int), 0, np.array(grid.shape[::-1]) - 1)  # (x, y, z)
    lo, hi = _window(np.asarray(volume.data)[mask_arr] if mask_arr.any() else np.asarray(volume.data))
    ex, ey, ez = np.eye(3)
    planes = {
        "axial": (vol[c[2]], msk[c[2]], ex, ey, f"S = {centre[2]:+.1f} mm"),
        "coronal": (vol[:, c[1], :], msk[:, c[1], :], ex, ez, f"A = {centre[1]:+.1f} mm"),
        "sagittal": (vol[:, :, c[0]], msk[:, :, c[0]], ey, ez, f"R = {centre[0]:+.1f} mm"),
    }
    screens = {}
    for name, (pl, pm, u_col, u_row, where) in planes.items():
        right, up = _PLANES[name]
        a, sh, sv = _to_screen(pl, u_col, u_row, res, res, right, up)
        m, _, _ = _to_screen(pm.astype(np.float32), u_col, u_row, res, res, right, up)
        screens[name] = (a, m, sh, sv, where)
    widths = [a.shape[1] * sh for a, _, sh, _, _ in screens.values()]
    height = max(a.shape[0] * sv for a, _, _, sv, _ in screens.values())
    # one mm-per-pixel scale for the three panels: widths in proportion, the same height
    fig, axes = plt.subplots(1, 3, figsize=(11, 4.3), gridspec_kw={"width_ratios": widths})
    fig.patch.set_facecolor("white")
    for ax, (name, (a, m, sh, sv, where)) in zip(axes, screens.items()):
        right, up = _PLANES[name]
        w_mm, h_mm = a.shape[1] * sh, a.shape[0] * sv
        top = -(height - h_mm) / 2  # centre the shorter views vertically
        ax.imshow(a, cmap="gray", vmin=lo, vmax=hi, extent=(0, w_mm, h_mm, 0), interpolation="nearest")
        if m.any() and not m.all():
            xs, ys = (np.arange(a.shape[1]) + 0.5) * sh, (np.arange(a.shape[0]) + 0.5) * sv
            ax.contour(xs, ys, m, levels=[0.5], colors=["#ffd400"], linewidths=0.7, alpha=0.8)
        bar = _scale_bar_mm(max(widths))
        x0, y0 = 0.05 * w_mm, top + 0.95 * height
        ax.plot([x0, x0 + bar], [y0, y0], color="white", lw=3, solid_capstyle="butt")
        ax.text(x0 + bar / 2, y0 - 0.015 * height, f"{bar} mm", color="white", ha="center", va="bottom", fontsize=8)
        letters = _edge_letters(right, up)
        style = {"color": "#7fd4ff", "fontsize": 10, "fontweight": "bold", "transform": ax.transAxes, "path_effects": _halo()}
        ax.text(0.015, 0.5, letters["left"], ha="left", va="center", **style)
        ax.text(0.985, 0.5, letters["right"], ha="right", va="center", **style)
        ax.text(0.5, 0.985, letters["top"], ha="center", va="top", **style)
        ax.text(0.5, 0.015, letters["bottom"], ha="center", va="bottom", **style)
        ax.set_xlim(0, w_mm)
        ax.set_ylim(top + height, top)
        ax.set_title(f"{name} ({where})", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_facecolor("black")
        if name == "axial":
            thumb = a
    fig.tight_layout()
    _save(fig, path, plt)
    # thumbnail: the axial view alone, 192 px wide, no axes
    from scipy import ndimage

    z = 192.0 / max(thumb.shape[1], 1)
    small = ndimage.zoom(np.clip((thumb - lo) / (hi - lo), 0, 1), z, order=1)
    with atomic_path(thumb_path, ".png") as tmp:
        plt.imsave(tmp, small, cmap="gray", vmin=0, vmax=1, metadata=_PNG_META)
    return {
        "centre": centre[:3],
        "display_mm": res,
        "grid": volume.shape[::-1],
        "spacing": volume.spacing,
    }


def draw_montage(stack, mask_arr, table: SliceTable, stack_index: int, name: str, path: Path, plt,
                 tile: int = 104, max_cols: int = 8) -> dict:
    """Montage of the stack's slices that entered the fit, each framed in its weight's colour."""
    from matplotlib import cm, colors
    from scipy import ndimage

    rows = table.of(stack_index)
    data = np.asarray(stack.data, np.float32)
    jj = np.flatnonzero(mask_arr.any(axis=(0, 2)))
    ii = np.flatnonzero(mask_arr.any(axis=(0, 1)))
    pad = 3
    if len(jj) == 0:
        jj, ii = np.arange(data.shape[1]), np.arange(data.shape[2])
    j0, j1 = max(jj[0] - pad, 0), min(jj[-1] + pad + 1, data.shape[1])
    i0, i1 = max(ii[0] - pad, 0), min(ii[-1] + pad + 1, data.shape[2])
    lo, hi = _window(data[mask_arr] if mask_arr.any() else data)
    direction, spacing = stack.direction, stack.spacing
    plane, oblique = _plane_name(direction)
    right, up = _PLANES[plane]
    cmap = plt.get_cmap(WEIGHT_CMAP)
    border, label_h, gap, title_h, bar_h = 4, 15, 6, 30, 62
    cell_w, cell_h = tile + 2 * border + gap, tile + 2 * border + label_h + gap
    n = max(len(rows), 1)
    nrows = int(np.ceil(n / max_cols))
    ncols = int(np.ceil(n / nrows))  # balanced rows: 17 slices -> 6, 6, 5
    width = max(ncols * cell_w + gap, 640)
    height = nrows * cell_h + gap
    canvas = np.ones((height, width, 3), np.float32)
    labels = []
    for pos, r in enumerate(rows):
        k, w = int(table.slice[r]), float(table.weight[r])
        a, sh, sv = _to_screen(data[k, j0:j1, i0:i1], direction[:, 0], direction[:, 1], spacing[0], spacing[1], right, up)
        px = max(a.shape[1] * sh, a.shape[0] * sv) / tile  # mm per display pixel
        a = ndimage.zoom(a, (sv / px, sh / px), order=1)[:tile, :tile]
        g = np.clip((a - lo) / (hi - lo), 0, 1)
        y0 = gap + (pos // ncols) * cell_h
        x0 = gap + (pos % ncols) * cell_w
        canvas[y0 : y0 + tile + 2 * border, x0 : x0 + tile + 2 * border] = cmap(w)[:3]
        canvas[y0 + border : y0 + border + tile, x0 + border : x0 + border + tile] = 0.0
        oy, ox = (tile - g.shape[0]) // 2, (tile - g.shape[1]) // 2
        canvas[y0 + border + oy : y0 + border + oy + g.shape[0], x0 + border + ox : x0 + border + ox + g.shape[1]] = g[..., None]
        labels.append((x0 + border + tile / 2, y0 + tile + 2 * border + label_h / 2, f"k={k}  w={w:.2f}", w < LOW_WEIGHT))
    fig_h = height + title_h + bar_h
    fig = plt.figure(figsize=(width / 100, fig_h / 100), dpi=100)
    ax = fig.add_axes((0, bar_h / fig_h, 1, height / fig_h))
    ax.imshow(canvas, interpolation="nearest", extent=(0, width, height, 0))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    for x, y, text, low in labels:
        ax.text(x, y, text, ha="center", va="center", fontsize=7.5, color="#a3271b" if low else "#1d2430",
                fontweight="bold" if low else "normal")
    if len(rows):
        letters = _edge_letters(right, up)
        x0, y0 = gap + border, gap + border
        style = {"color": "#7fd4ff", "fontsize": 7.5, "fontweight": "bold", "path_effects": _halo()}
        ax.text(x0 + 2, y0 + tile / 2, letters["left"], ha="left", va="center", **style)
        ax.text(x0 + tile - 2, y0 + tile / 2, letters["right"], ha="right", va="center", **style)
        ax.text(x0 + tile / 2, y0 + 2, letters["top"], ha="center", va="top", **style)
        ax.text(x0 + tile / 2, y0 + tile - 2, letters["bottom"], ha="center", va="bottom", **style)
    obl = f", normal {oblique:.0f}\N{DEGREE SIGN} off the axis" if oblique >= 5 else ""
    fig.text(0.01, 1 - 0.5 * title_h / fig_h, f"stack {stack_index}: {name}  ({plane}{obl}; {len(rows)} slices in the fit)",
             ha="left", va="center", fontsize=10)
    cax = fig.add_axes((0.25, 0.62 * bar_h / fig_h, 0.5, 0.16 * bar_h / fig_h))
    sm = cm.ScalarMappable(norm=colors.Normalize(0, 1), cmap=cmap)
    cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
    cb.set_label("robust slice weight (frame colour): 0 = rejected, 1 = fully used", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    _save(fig, path, plt)
    return {"plane": plane, "oblique_deg": oblique, "crop": (i1 - i0, j1 - j0), "window": (lo, hi)}


def draw_slice_plots(per_stack: list[dict], path: Path, plt) -> None:
    """Rotation, displacement and residual per slice, one row per stack, coloured by weight."""
    from matplotlib.ticker import MaxNLocator

    n = max(len(per_stack), 1)
    fig, axes = plt.subplots(n, 3, figsize=(11, 1.75 * n + 1.1), squeeze=False, sharey="col", layout="constrained")
    cmap = plt.get_cmap(WEIGHT_CMAP)
    titles = ("rotation vs stack mean pose (deg)", "displacement of the brain centre vs stack mean pose (mm)",
              "relative residual (log scale)")
    sc = None
    res_all = np.concatenate([s["residual"] for s in per_stack]) if per_stack else np.ones(1)
    for r, s in enumerate(per_stack):
        x = s["x"]
        order = np.argsort(x, kind="stable")
        for c, y in enumerate((s["rotation"], s["displacement"], s["residual"])):
            ax = axes[r, c]
            ax.plot(x[order], y[order], color="#9aa3b0", lw=0.8, zorder=1)
            sc = ax.scatter(x, y, c=s["weight"], cmap=cmap, vmin=0, vmax=1, s=16, edgecolors="#333333", linewidths=0.4, zorder=2)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
            if r == n - 1 or s["ordered"] != per_stack[min(r + 1, n - 1)]["ordered"]:
                ax.set_xlabel("acquisition position (SliceTiming)" if s["ordered"] else "slice index k (acquisition order unknown)", fontsize=8)
        axes[r, 0].set_ylabel(f"stack {s['index']}", fontsize=9)
    for c, key in ((0, "rotation"), (1, "displacement")):  # magnitudes: from 0 (shared per column)
        top = max([float(s[key].max()) for s in per_stack if len(s[key])] + [0.0])
        axes[0, c].set_ylim(0, top * 1.1 if top > 0 else 1.0)
    if per_stack:
        positive = res_all[res_all > 0]
        if positive.size and positive.max() / max(positive.min(), 1e-30) > 20:
            axes[0, 2].set_yscale("log")
        else:
            for r in range(n):
                axes[r, 2].set_title(axes[r, 2].get_title().replace(" (log scale)", ""), fontsize=9)
    if sc is not None:
        cb = fig.colorbar(sc, ax=axes, shrink=0.6, pad=0.01, aspect=30)
        cb.set_label("robust slice weight", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    _save(fig, path, plt)


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value, fmt: str = ".3g") -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float) and not np.isfinite(value):
        return _e(value)
    return _e(format(value, fmt))


def format_seconds(seconds) -> str:
    """``12.3 s`` below two minutes, else :func:`gaussian_mri._progress.format_duration` (``2 min 8 s``);
    an en dash when unknown."""
    if not isinstance(seconds, (int, float)) or not np.isfinite(seconds):
        return "&ndash;"
    seconds = float(seconds)
    return f"{seconds:.1f} s" if seconds < 120 else format_duration(seconds)


_TIMING_NAMES = {
    "prepare_s": "prepare inputs",
    "align_s": "rigid stack alignment",
    "fit_s": "fit",
    "register_s": "slice registration rounds (within the fit)",
    "render_s": "render the volume",
    "maps_s": "covariance maps",
    "total_s": "total reconstruction",
}


def _timings_html(timings: dict, report_s: float, device: str | None, kernels: str | None) -> str:
    rows = []
    for key, value in timings.items():
        if key.endswith("_s") and isinstance(value, (int, float)):
            long = f" ({format_seconds(value)})" if value >= 120 else ""
            rows.append(f'<tr><td>{_e(_TIMING_NAMES.get(key, key[:-2]))}</td><td class="num">{float(value):.2f} s{long}</td></tr>')
    iterations = timings.get("iterations")
    if isinstance(iterations, (int, float)) and iterations > 0:
        rows.append(f'<tr><td>iterations</td><td class="num">{int(iterations)}</td></tr>')
        if isinstance(timings.get("fit_s"), (int, float)):
            per = timings["fit_s"] / iterations
            rows.append(f'<tr><td>fit time per iteration</td><td class="num">{per * 1000:.1f} ms</td></tr>' if per < 1 else
                        f'<tr><td>fit time per iteration</td><td class="num">{per:.2f} s</td></tr>')
    rows.append(f'<tr><td>this QC report</td><td class="num">{report_s:.1f} s</td></tr>')
    if device or kernels:
        rows.append(f"<tr><td>device, renderer</td><td>{_e(device or '?')}, {_e(kernels or '?')}</td></tr>")
    return '<table id="timings">' + "".join(rows) + "</table>"


def _value(v) -> str:
    return format(v, ".6g") if isinstance(v, float) else str(v)


def _grid_table(items: Sequence[tuple[str, object]], columns: int = 3) -> str:
    """Key/value pairs in ``columns`` column pairs, filled column by column."""
    n = len(items)
    rows = int(np.ceil(n / columns)) if n else 0
    body = []
    for r in range(rows):
        cells = []
        for c in range(columns):
            i = c * rows + r
            cells.append(f"<td>{_e(items[i][0])}</td><td>{_e(_value(items[i][1]))}</td>" if i < n else "<td></td><td></td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return '<table class="kv" id="config-table">' + "".join(body) + "</table>"


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------------------------------
# Folder replacement
# --------------------------------------------------------------------------------------------------


@contextmanager
def _replace_folder(path: Path) -> Iterator[Path]:
    """Yield a new empty folder beside ``path``; on success it replaces ``path`` (renames), on failure it
    is removed and ``path`` is left as it was."""
    for _ in range(100):
        tmp = path.with_name(f".tmp_{path.name}_{secrets.token_hex(4)}")
        try:
            tmp.mkdir(0o777)  # the umask applies, as for a plain mkdir
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary folder name beside {path}")
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".old_{path.name}_{secrets.token_hex(4)}")
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


def write_report(
    result_dir: str | os.PathLike,
    stacks: Sequence[str | os.PathLike],
    masks: Sequence[str | os.PathLike | None] | None = None,
    title: str = "",
    *,
    volume: str | os.PathLike | None = None,
    mask: str | os.PathLike | None = None,
) -> Path:
    """Write the QC report of the reconstruction in ``result_dir``; returns the path of ``report.html``.

    Parameters
    ----------
    result_dir : path
        Folder written by ``gaussian-mri svr`` / :func:`gaussian_mri.svr.io.save_result`: needs
        ``recon.nii.gz``, ``recon_mask.nii.gz`` and ``slices.tsv``; ``report.json`` is used when present.
    stacks : paths
        The input stacks, in the order given to the reconstruction (stack ``n`` of ``slices.tsv``).
        A BIDS sidecar beside a stack (``x.nii.gz`` -> ``x.json``) with ``SliceTiming`` gives the
        acquisition order of its slices.
    masks : paths or None, optional
        One mask (or ``None`` = the automatic mask, recomputed as the reconstruction did) per stack.
    title : str
        Page title (default: "GaussianSVR QC: <result folder name>").
    volume, mask : paths, optional
        The reconstruction and its mask when they are not ``recon.nii.gz`` / ``recon_mask.nii.gz`` in
        ``result_dir`` (e.g. moved to ``anat/`` by the BIDS App). Default: the ``volume`` / ``mask`` of
        ``report.json``'s ``outputs`` (relative to ``result_dir``) when those files exist, else the
        standard names. The page names the files read.

    Writes ``result_dir/qc/`` (``report.html``, ``views.png``, ``thumbnail.png``, ``stack_NN.png``,
    ``slices.png``), replacing a previous one only once the new one is complete. Raises
    :class:`gaussian_mri._optional.MissingDependencyError` without matplotlib, ``FileNotFoundError``
    for missing results or inputs, ``ValueError`` when the inputs do not match ``slices.tsv``.
    """
    from .. import __version__
    from .._optional import pyplot
    from ..image import read_image
    from ..svr.masking import mask_on_stack
    from ..svr.files import OUTPUT_FILES

    t0 = time.perf_counter()
    plt = pyplot("the QC report (gaussian_mri.qc)")
    result_dir = Path(result_dir)
    stack_paths = [Path(p) for p in stacks]
    mask_paths = [None] * len(stack_paths) if masks is None else [None if m is None else Path(m) for m in masks]
    if len(mask_paths) != len(stack_paths):
        raise ValueError(f"got {len(mask_paths)} masks for {len(stack_paths)} stacks; pass one mask (or None) per stack")
    files = {k: result_dir / OUTPUT_FILES[k] for k in ("volume", "mask", "slices", "report")}
    report = {}
    if files["report"].is_file():
        try:
            report = json.loads(files["report"].read_text())
        except ValueError as exc:
            log.warning("%s is not valid JSON (%s); the report lacks timings and configuration", files["report"], exc)
    report = report if isinstance(report, dict) else {}
    listed = report.get("outputs") if isinstance(report.get("outputs"), dict) else {}
    for key, given in (("volume", volume), ("mask", mask)):
        if given is not None:
            files[key] = Path(given)
        elif isinstance(listed.get(key), str) and (result_dir / listed[key]).is_file():
            files[key] = result_dir / listed[key]
    for key in ("volume", "mask", "slices"):
        if not files[key].is_file():
            raise FileNotFoundError(f"{files[key]} not found: write_report needs the results of gaussian-mri svr in {result_dir}")
    for p in stack_paths + [m for m in mask_paths if m is not None]:
        if not p.exists():
            raise FileNotFoundError(f"input {p} not found")
    table = read_slices_tsv(files["slices"])
    if len(table.stack) and (table.stack.max() >= len(stack_paths) or table.stack.min() < 0):
        raise ValueError(f"{files['slices']} refers to stack {table.stack.max()}, but {len(stack_paths)} stack file(s) were given; "
                         "pass the stacks in the order of the reconstruction")
    volume, vmask = read_image(files["volume"]), read_image(files["mask"])
    title = title or f"GaussianSVR QC: {result_dir.resolve().name}"

    qc = result_dir / QC_DIR
    with _replace_folder(qc) as out:
        views = draw_views(volume, vmask, out / "views.png", out / THUMBNAIL_NAME, plt)
        per_stack, stack_rows, montages = [], [], []
        for n, sp in enumerate(stack_paths):
            stack = read_image(sp)
            mask_arr = mask_on_stack(stack, None if mask_paths[n] is None else read_image(mask_paths[n]))
            rows = table.of(n)
            if len(rows) and table.slice[rows].max() >= stack.shape[0]:
                raise ValueError(f"{files['slices']} has slice {table.slice[rows].max()} for stack {n}, but {sp.name} has {stack.shape[0]} slices")
            rank = acquisition_rank(sp, stack.shape[0])
            png = f"stack_{n:02d}.png"
            info = draw_montage(stack, mask_arr, table, n, sp.name, out / png, plt)
            montages.append((n, sp.name, png, info, len(rows), stack.shape[0], rank is not None))
            # motion: the brain centre of the stack mask, moved into each slice's plane
            if mask_arr.any():
                cj, ci = np.argwhere(mask_arr.any(0)).mean(0)
            else:
                cj, ci = (stack.shape[1] - 1) / 2, (stack.shape[2] - 1) / 2
            ks = table.slice[rows].astype(np.float64)
            pts = (np.stack([np.full_like(ks, ci), np.full_like(ks, cj), ks, np.ones_like(ks)], 1) @ stack.affine.T)[:, :3]
            if len(rows):
                rot, disp, mean = slice_motion(table.transform[rows], table.weight[rows], pts)
                centre = stack.affine @ np.array([ci, cj, (stack.shape[0] - 1) / 2, 1.0])
                stack_rot = float(rotation_deg(mean[:3, :3]))
                stack_shift = float(np.linalg.norm((mean @ centre)[:3] - centre[:3]))
            else:
                rot = disp = np.zeros(0)
                stack_rot = stack_shift = float("nan")
            x = (rank[table.slice[rows]] if rank is not None else table.slice[rows]).astype(np.float64)
            per_stack.append({"index": n, "x": x, "ordered": rank is not None, "rotation": rot, "displacement": disp,
                              "residual": table.residual[rows], "weight": table.weight[rows], "rows": rows, "rank": rank})
            w = table.weight[rows]
            thick = stack.slice_thickness
            plane_txt = info["plane"] + (f", {info['oblique_deg']:.0f}&deg; obl." if info["oblique_deg"] >= 5 else "")
            stack_rows.append(
                "<tr>"
                f"<td>{n}</td><td>{_e(sp.name)}</td><td>{plane_txt}</td>"
                f"<td>{stack.shape[2]}&times;{stack.shape[1]}&times;{stack.shape[0]}</td>"
                f"<td>{stack.spacing[0]:.2f}&times;{stack.spacing[1]:.2f}&times;{stack.spacing[2]:.2f}</td>"
                f'<td class="num">{_num(float(thick) if thick else None, ".2f")}</td>'
                f'<td class="num" data-count="{len(rows)}">{len(rows)} / {stack.shape[0]}</td>'
                f'<td class="num">{_num(float(w.mean()) if len(w) else None, ".2f")}</td>'
                f'<td class="num">{int((w < LOW_WEIGHT).sum())}</td>'
                f'<td class="num">{_num(float(np.median(table.residual[rows])) if len(rows) else None)}</td>'
                f'<td class="num">{_num(float(rot.max()) if len(rot) else None, ".2f")}</td>'
                f'<td class="num">{_num(float(disp.max()) if len(disp) else None, ".2f")}</td>'
                f'<td class="num">{_num(stack_rot, ".1f")}&deg;, {_num(stack_shift, ".1f")} mm</td>'
                "</tr>"
            )
        draw_slice_plots(per_stack, out / "slices.png", plt)

        # ---- HTML
        n_used = len(table.weight)
        n_low = int((table.weight < LOW_WEIGHT).sum())
        timings = report.get("timings_s") or {}
        total = timings.get("total_s")
        config = report.get("config") or {}
        warnings_ = report.get("warnings") or []
        extra = {"kernels": "renderer that ran", "final_loss": "final loss", "intensity_scale": "intensity scale"}
        cfg_items = list(config.items()) + [(name, report[k]) for k, name in extra.items() if k in report]
        summary = (
            '<div class="summary">'
            f"<div><b>{len(stack_paths)}</b>stacks</div>"
            f'<div><b id="n-slices">{n_used}</b>slices in the fit</div>'
            f'<div><b id="n-low">{n_low}</b>down-weighted (w &lt; {LOW_WEIGHT})</div>'
            f"<div><b>{format_seconds(total)}</b>reconstruction time</div>"
            f"<div><b>{_e(config.get('motion', '?'))}</b>motion model</div>"
            f"<div><b>{_num(float(views['spacing'].min()), '.2f')} mm</b>output voxels</div>"
            "</div>"
        )
        if warnings_:
            warn_html = "".join(f'<div class="warn">{_e(w)}</div>' for w in warnings_)
        elif report:
            warn_html = '<p class="ok">No warnings from the reconstruction.</p>'
        else:
            warn_html = f'<div class="warn">{_e(OUTPUT_FILES["report"])} was not found: no timings, configuration or warnings.</div>'
        ce = views["centre"]
        g = views["grid"]
        sp = views["spacing"]
        order_note = (
            "Per stack, the x axis is the acquisition position from the BIDS sidecar's SliceTiming where the "
            "stack has one, else the slice index k (the acquisition order is not in the inputs: fetal single-shot "
            "stacks are usually interleaved, so neighbours on this axis may have been acquired seconds apart)."
        )
        slice_rows = []
        for s in per_stack:
            for m, r in enumerate(s["rows"]):
                cls = ' class="low"' if table.weight[r] < LOW_WEIGHT else ""
                acq = "" if s["rank"] is None else str(int(s["rank"][table.slice[r]]))
                slice_rows.append(
                    f'<tr{cls} data-stack="{s["index"]}" data-slice="{table.slice[r]}" data-weight="{float(table.weight[r])!r}" '
                    f'data-residual="{float(table.residual[r])!r}" data-acq="{acq}"><td>{s["index"]}</td><td class="num">{table.slice[r]}</td>'
                    f'<td class="num">{acq}</td><td class="num">{table.weight[r]:.3f}</td><td class="num">{table.residual[r]:.3g}</td>'
                    f'<td class="num">{s["rotation"][m]:.2f}</td><td class="num">{s["displacement"][m]:.2f}</td></tr>'
                )
        montage_html = "".join(
            f'<figure id="stack-{n}"><img src="{png}" alt="stack {n} ({_e(name)}): slices framed by their robust weight">'
            f"<figcaption>Stack {n}, {_e(name)}: {used} of {k} slices entered the fit (slices without mask voxels are not shown); "
            f"grey window 0&ndash;{info['window'][1]:.4g} for every slice of the stack (99.5th percentile inside the mask), so a "
            "drop-out or signal void looks dark. Letters on the first slice: orientation (radiological display). Acquisition order: "
            f"{'from SliceTiming in the BIDS sidecar' if timed else 'unknown (no SliceTiming in a BIDS sidecar)'}.</figcaption></figure>"
            for n, name, png, info, used, k, timed in montages
        )
        version = report.get("engine_version") or report.get("version")
        body = f"""
<h1>{_e(title)}</h1>
<p class="sub">Result folder <code>{_e(result_dir.resolve().name)}</code> &middot; report written {_e(datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z'))}
 by GaussianMRI {_e(__version__)}{'' if not version else ' (reconstruction by ' + _e(version) + ')'}</p>
{summary}
<section id="warnings"><h2>Warnings</h2>{warn_html}</section>
<section id="volume"><h2>Reconstruction</h2>
<figure><img src="views.png" alt="orthogonal views of the reconstruction">
<figcaption>{_e(files['volume'].name)}: {g[0]}&times;{g[1]}&times;{g[2]} voxels of {sp[0]:.2f}&times;{sp[1]:.2f}&times;{sp[2]:.2f} mm.
Planes through the centroid of the output mask (R {ce[0]:+.1f}, A {ce[1]:+.1f}, S {ce[2]:+.1f} mm), resampled onto an RAS-aligned
{views['display_mm']:.2f} mm grid; radiological display (patient right on the left; sagittal: anterior on the right); yellow line:
output mask ({_e(files['mask'].name)}); grey window 0&ndash;99.5th percentile inside the mask.</figcaption></figure>
</section>
<section id="stacks"><h2>Input stacks</h2>
<div class="scroll"><table id="stack-table"><tr><th>#</th><th>file</th><th>plane</th><th>grid i&times;j&times;k</th><th>voxel (mm)</th><th>thickness (mm)</th>
<th>slices in fit</th><th>mean weight</th><th>w&nbsp;&lt;&nbsp;{LOW_WEIGHT}</th><th>median residual</th><th>max rotation (deg)</th><th>max displ. (mm)</th>
<th>stack pose vs header</th></tr>{''.join(stack_rows)}</table></div>
<p class="note">Weights: the robust slice weights of the fit (Welsch function of a robust z-score of the log slice residuals; 1 = fully used).
Residual: masked squared error over masked signal energy of the slice. Rotation and displacement: relative to the stack's
mean pose (weighted by the slice weights); the displacement is that of the brain centre in the slice's plane. Stack pose vs header:
the stack's mean pose relative to its header position (rigid pre-alignment and fitted stack motion), as a rotation angle and the
displacement of the stack's brain centre.</p>
{montage_html}
</section>
<section id="motion"><h2>Motion and residuals per slice</h2>
<figure><img src="slices.png" alt="estimated motion and residual per slice">
<figcaption>One row per stack; dot colour: robust slice weight. Motion model: {_e(config.get('motion', 'unknown'))}. {_e(order_note)}</figcaption></figure>
</section>
<section id="timing"><h2>Timing</h2>{_timings_html(timings, time.perf_counter() - t0, config.get("device"), report.get("kernels"))}</section>
<section id="config"><h2>Configuration</h2>{_grid_table(cfg_items) if cfg_items else '<p class="note">not available</p>'}</section>
<section id="slices"><h2>Per-slice table</h2>
<details><summary>{n_used} slices (stack, slice index k, acquisition position, weight, residual, rotation and displacement vs the stack's mean pose)</summary>
<table id="slice-table"><tr><th>stack</th><th>k</th><th>acq.</th><th>weight</th><th>residual</th><th>rotation (deg)</th><th>displacement (mm)</th></tr>
{''.join(slice_rows)}</table></details>
</section>
<footer>Self-contained page: inline style, images in this folder, nothing loaded from the network.
Inputs: {', '.join(_e(p.name) for p in stack_paths)}.</footer>
"""
        atomic_write_text(out / REPORT_NAME, _page(title, body))
    log.info("QC report written: %s (%.1f s)", qc / REPORT_NAME, time.perf_counter() - t0)
    return qc / REPORT_NAME
