"""The QC report (:mod:`gaussian_mri.qc`): content against ``slices.tsv``, self-containment, and a real
headless Chromium rendering it (images loaded, sections laid out, screenshot not blank).

One tiny reconstruction per module (three simulated stacks of the bundled CC0 atlas crop with slice
motion and corrupted slices, 500 Gaussians, 10 iterations, 2 mm; a few seconds on 2 CPU cores); the
third stack has no mask (the automatic mask, recomputed by the report) and the second a BIDS sidecar
with an interleaved ``SliceTiming``. The browser tests need ``chromium`` on PATH (Debian package
``chromium``, installed by ``.ci/run``) and are skipped without it.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from _cases import atlas_truth  # bundled CC0 atlas crop (tests/data/SOURCE.md)

from gaussian_mri._optional import MissingDependencyError
from gaussian_mri.image import write_image
from gaussian_mri.qc import report as qc_report
from gaussian_mri.qc import write_index, write_report
from gaussian_mri.svr import SVRConfig, reconstruct
from gaussian_mri.svr.io import save_result
from gaussian_mri.svr.simulate import MotionSpec, simulate_stacks
from gaussian_mri.transforms import rigid_matrix

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_SKIP = (
    "optional peer: no chromium on PATH (the headless browser that renders the QC report; "
    "apt-get install chromium, as .ci/run does)"
)
SECTIONS = ("warnings", "volume", "stacks", "motion", "timing", "config", "slices")
INTERLEAVED = None  # SliceTiming of stack 1, set by the fixture


# --------------------------------------------------------------------------------------------------
# Fixture: one tiny reconstruction and its report
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """``(result_dir, stack_paths, mask_paths, report_path)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("qc")
        vol, mask = atlas_truth(2.0)
        sims = simulate_stacks(vol, mask, thickness_mm=4.0, inplane_mm=2.0, margin_mm=4.0,
                               motion=MotionSpec(rotation_deg=3.0, translation_mm=2.0, seed=3),
                               void_fraction=0.15, noise_sigma=0.01, seed=1)
        stacks = [write_image(s.image, root / f"sub-01_run-{n + 1}_T2w.nii.gz") for n, s in enumerate(sims)]
        masks = [write_image(s.mask, root / f"sub-01_run-{n + 1}_mask.nii.gz") for n, s in enumerate(sims[:2])] + [None]
        k = sims[1].image.shape[0]
        order = list(range(0, k, 2)) + list(range(1, k, 2))  # interleaved: even slices first
        timing = np.zeros(k)
        timing[order] = np.arange(k) * 0.8
        (root / "sub-01_run-2_T2w.json").write_text(json.dumps({"SliceTiming": timing.tolist()}))
        cfg = SVRConfig(resolution_mm=2.0, margin_mm=4.0, n_gaussians=500, iterations=10, slices_per_batch=12,
                        device="cpu", maps=False, seed=0)
        res = reconstruct([s.image for s in sims], [sims[0].mask, sims[1].mask, None], config=cfg)
        out = root / "result"
        save_result(res, out)
        report = write_report(out, stacks, masks, title="QC test")
    finally:
        torch.set_num_threads(threads)
    return out, stacks, masks, report, timing


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


class _Page(HTMLParser):
    """Collects elements (tag, attributes) and checks that every non-void element is closed in order."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "input", "source", "col", "wbr"})

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag):
        return [a for t, a in self.elements if t == tag]


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert not page.errors and not page.stack, (page.errors, page.stack)
    return page


def _tsv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _assert_self_contained(html_path: Path, page: _Page) -> list[Path]:
    """No remote reference anywhere; every src/href is a relative path to an existing file. Returns them."""
    raw = html_path.read_text(encoding="utf-8").lower()
    for needle in ("http://", "https://", "url(", "@import", "//cdn", "<link", "<iframe", "<object"):
        assert needle not in raw, needle
    files = []
    for tag, attr in (("img", "src"), ("a", "href"), ("script", "src")):
        for a in page.all(tag):
            if attr not in a:
                continue
            ref = a[attr]
            assert ref and not ref.startswith(("/", "file:", "data:", "javascript:")) and ":" not in ref, ref
            target = (html_path.parent / ref).resolve()
            assert target.is_file(), ref
            files.append(target)
    return files


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def _chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.skip(CHROMIUM_SKIP)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={profile}", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


#: Appended to a copy of a page (test only; the report itself has no script): after loading, records
#: every image's natural and laid-out size and every section's laid-out height in body attributes.
_PROBE = """<script>
window.addEventListener("load", function () {
  var out = [];
  for (var i = 0; i < document.images.length; i++) {
    var im = document.images[i], box = im.getBoundingClientRect();
    out.push(im.getAttribute("src") + "|" + im.naturalWidth + "|" + im.naturalHeight + "|" + Math.round(box.width));
  }
  document.body.setAttribute("data-images", out.join(";"));
  var secs = [];
  document.querySelectorAll("section").forEach(function (s) { secs.push(s.id + "|" + Math.round(s.getBoundingClientRect().height)); });
  document.body.setAttribute("data-sections", secs.join(";"));
  var th = document.querySelectorAll("th.sortable");
  if (th.length) {
    th[3].click();  // "time", ascending
    var order = [];
    document.querySelectorAll("#index tbody tr").forEach(function (r) { order.push(r.cells[1].textContent); });
    document.body.setAttribute("data-sorted", order.join(","));
  }
  document.body.setAttribute("data-probe", "done");
});
</script>"""


def _probe(page: Path) -> dict:
    """Load a copy of ``page`` (same folder, so relative links resolve) with :data:`_PROBE` in Chromium."""
    copy = page.with_name("_probe_" + page.name)
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    try:
        dom = _chromium("--virtual-time-budget=10000", "--dump-dom", copy.as_uri()).stdout
    finally:
        copy.unlink()
    parsed = _Page()
    parsed.feed(dom)
    body = parsed.all("body")[0]
    assert body.get("data-probe") == "done", dom[-500:]
    return body


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


def test_report_is_self_contained_and_complete(result):
    out, stacks, _, report, _ = result
    assert report == out / "qc" / "report.html"
    page = _parse(report)
    files = _assert_self_contained(report, page)
    names = {f.name for f in files}
    assert {"views.png", "slices.png", "stack_00.png", "stack_01.png", "stack_02.png"} <= names
    assert all(f.parent == report.parent for f in files)
    ids = {a.get("id") for _, a in page.elements}
    assert set(SECTIONS) <= ids
    assert not page.all("script")  # the report has no script
    assert (report.parent / "thumbnail.png").is_file()
    assert not list(out.glob(".tmp_*")) and not list(out.glob(".old_*"))
    text = " ".join(page.text)
    for stack in stacks:
        assert stack.name in text
    assert "relative to the stack's" in text.replace("\n", " ") or "vs the stack's mean pose" in text
    assert "acquisition order is not in the inputs" in text  # stacks 0 and 2 have no SliceTiming


def test_report_numbers_match_slices_tsv(result):
    out, stacks, _, report, timing = result
    rows = _tsv(out / "slices.tsv")
    page = _parse(report)
    trs = [a for a in page.all("tr") if "data-weight" in a]
    assert len(trs) == len(rows) > 20
    got = {(int(a["data-stack"]), int(a["data-slice"])): (float(a["data-weight"]), float(a["data-residual"])) for a in trs}
    want = {(int(r["stack"]), int(r["slice"])): (float(r["weight"]), float(r["residual"])) for r in rows}
    assert got == want
    counts = [int(a["data-count"]) for a in page.all("td") if "data-count" in a]
    assert counts == [sum(int(r["stack"]) == n for r in rows) for n in range(len(stacks))]
    html = report.read_text()
    n_low = sum(float(r["weight"]) < 0.5 for r in rows)
    assert 0 < n_low < len(rows)  # the simulated voids are down-weighted, not everything
    assert f'<b id="n-slices">{len(rows)}</b>' in html and f'<b id="n-low">{n_low}</b>' in html
    timings = json.loads((out / "report.json").read_text())["timings_s"]
    assert f'{timings["total_s"]:.2f} s' in html and f'{timings["fit_s"]:.2f} s' in html
    # stack 1 has an interleaved SliceTiming: its acquisition column is the rank of the slice time
    rank = np.argsort(np.argsort(timing))
    assert not np.array_equal(rank, np.arange(len(timing)))
    for a in trs:
        k = int(a["data-slice"])
        assert a["data-acq"] == (str(rank[k]) if a["data-stack"] == "1" else ""), (a["data-stack"], k)


def test_motion_is_relative_to_the_weighted_mean_pose():
    def rigid(rotvec, translation, centre=(0.0, 0.0, 0.0)):
        t = lambda v: torch.tensor(v, dtype=torch.float64)
        return rigid_matrix(t(rotvec), t(translation), t(centre)).numpy()

    stack_pose = rigid([0.1, -0.3, 0.2], [5.0, -3.0, 2.0], [10.0, 0.0, 0.0])
    theta, d = np.radians(4.0), np.array([0.0, 1.5, 2.0])
    ts = [stack_pose @ rigid([s * theta, 0.0, 0.0], list(s * d)) for s in (1, -1, 1, -1)]
    w = [1.0] * 4
    ts.append(stack_pose @ rigid([0.0, 0.0, 1.2], [40.0, 0.0, 0.0]))
    w.append(1e-3)  # a rejected slice barely moves the mean pose
    rot, disp, mean = qc_report.slice_motion(np.stack(ts), np.array(w), np.zeros((5, 3)))
    assert np.allclose(mean, stack_pose, atol=0.05)
    assert np.allclose(rot[:4], 4.0, atol=0.1) and np.allclose(disp[:4], np.linalg.norm(d), atol=0.1)
    assert rot[4] > 60 and disp[4] > 35
    same = qc_report.slice_motion(np.stack([stack_pose] * 3), np.ones(3), np.random.default_rng(0).normal(size=(3, 3)) * 30)
    assert np.allclose(same[0], 0, atol=1e-4) and np.allclose(same[1], 0, atol=1e-6)
    assert np.isclose(qc_report.rotation_deg(same[2][:3, :3]), np.degrees(np.linalg.norm([0.1, -0.3, 0.2])), atol=1e-6)


@pytest.mark.parametrize(
    "plane, u_col, u_row, col_end, row_end",
    [
        # axial stack, i = R, j = A: patient right (high i) on the screen's left, anterior at the top
        ("axial", [1, 0, 0], [0, 1, 0], "left", "top"),
        # the simulator's sagittal stack, i = A, j = S: anterior on the right, superior at the top
        ("sagittal", [0, 1, 0], [0, 0, 1], "right", "top"),
        # a coronal stack with swapped in-plane axes, i = S, j = L: superior at the top, left on the right
        ("coronal", [0, 0, 1], [-1, 0, 0], "top", "right"),
    ],
)
def test_display_orientation(plane, u_col, u_row, col_end, row_end):
    """Where the last column / last row of a slice lands on the screen (radiological display)."""
    right, up = qc_report._PLANES[plane]
    for marker, want in (((2, 6), col_end), ((4, 3), row_end)):
        m = np.zeros((5, 7))  # rows j, columns i
        m[marker] = 1
        s, _, _ = qc_report._to_screen(m, np.array(u_col, float), np.array(u_row, float), 1.0, 1.0, right, up)
        (r, c), = np.argwhere(s == 1)
        side = {0: "left", s.shape[1] - 1: "right"}.get(c) or {0: "top", s.shape[0] - 1: "bottom"}[r]
        assert side == want, (plane, marker, side)
    letters = qc_report._edge_letters(right, up)
    assert (letters["left"], letters["top"]) == {"axial": ("R", "A"), "coronal": ("R", "S"), "sagittal": ("P", "S")}[plane]


def test_report_replaces_the_folder_only_when_complete(result, monkeypatch):
    out, stacks, masks, report, _ = result
    before = report.read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(qc_report, "draw_slice_plots", broken)
    with pytest.raises(RuntimeError, match="drawing failed"):
        write_report(out, stacks, masks)
    assert report.read_bytes() == before  # the previous report is untouched
    assert not list(out.glob(".tmp_*")) and not list(out.glob(".old_*"))
    with pytest.raises(ValueError, match="refers to stack 2"):
        write_report(out, stacks[:2], masks[:2])
    assert report.read_bytes() == before


def test_missing_matplotlib_is_a_clear_error_and_the_cli_only_warns(result, monkeypatch, tmp_path, caplog):
    out, stacks, masks, _, _ = result
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(MissingDependencyError, match="pip install matplotlib"):
        write_report(tmp_path, stacks, masks)
    assert not (tmp_path / "qc").exists()
    from gaussian_mri.commands.svr import _write_qc_report

    args = argparse.Namespace(output_dir=out, stacks=[str(s) for s in stacks], masks=[str(m) if m else "none" for m in masks])
    assert _write_qc_report(args) is None
    assert "pip install matplotlib" in caplog.text


def test_one_policy_for_a_failing_report_after_a_finished_reconstruction(result, monkeypatch, tmp_path, caplog):
    """write_report_safely (used by gaussian-mri svr, demo and bids): any error is a warning and a note."""
    import gaussian_mri.qc as qc
    from gaussian_mri.svr.files import masks_as_fitted

    out, stacks, masks, _, _ = result

    def broken(*args, **kwargs):
        raise KeyError("a bug (injected)")

    monkeypatch.setattr(qc, "write_report", broken)
    notes: list[str] = []
    assert qc.write_report_safely(out, stacks, masks, notes=notes) is None
    assert notes == ["QC report not written (KeyError: 'a bug (injected)'); the reconstruction files are complete"]
    assert "a bug (injected)" in caplog.text
    # each stack's mask as the fit used it: a single (reference) mask and the propagated files
    (tmp_path / "mask_propagated_stack-0.nii.gz").write_bytes(b"")
    assert masks_as_fitted(["ref.nii.gz"], 3, tmp_path, 1) == [str(tmp_path / "mask_propagated_stack-0.nii.gz"), "ref.nii.gz", None]
    assert masks_as_fitted(["a", None], 2, tmp_path, 0) == ["a", None] and masks_as_fitted(None, 2, tmp_path) is None


def test_cli_writes_the_report_by_default(result, tmp_path, capsys):
    from gaussian_mri.cli import main

    _, stacks, masks, _, _ = result
    common = ["svr", "--stacks", *map(str, stacks), "--masks", *(str(m) if m else "none" for m in masks),
              "--resolution", "2", "--n-gaussians", "300", "--iterations", "2", "--no-maps", "--no-stack-alignment", "--device", "cpu"]
    assert main([*common, "--output-dir", str(tmp_path / "on"), "--progress-json"]) == 0
    done = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"done"' in line][-1]
    assert Path(done["outputs"]["qc_report"]) == tmp_path / "on" / "qc" / "report.html"
    assert (tmp_path / "on" / "qc" / "report.html").is_file()
    assert main([*common, "--output-dir", str(tmp_path / "off"), "--no-qc-report"]) == 0
    assert (tmp_path / "off" / "recon.nii.gz").is_file() and not (tmp_path / "off" / "qc").exists()


# --------------------------------------------------------------------------------------------------
# In a real browser
# --------------------------------------------------------------------------------------------------


def test_chromium_loads_every_image_and_lays_out_every_section(result):
    _, _, _, report, _ = result
    body = _probe(report)
    images = [item.split("|") for item in body["data-images"].split(";")]
    assert len(images) == 5
    for src, nat_w, nat_h, shown_w in images:
        assert (int(nat_w), int(nat_h)) == _png_size(report.parent / src), src  # decoded the real file
        assert int(shown_w) > 300, src  # laid out, not collapsed
    sections = dict(item.split("|") for item in body["data-sections"].split(";"))
    assert set(SECTIONS) <= set(sections)
    assert all(int(h) > 20 for h in sections.values()), sections


def _screenshot_stats(page: Path, shot: Path) -> tuple[float, float]:
    """Fractions of (non-white, near-black) pixels of a 1200 x 3000 screenshot of ``page``."""
    from PIL import Image

    _chromium(f"--screenshot={shot}", "--window-size=1200,3000", page.as_uri())
    with Image.open(shot) as im:
        assert im.size == (1200, 3000)
        g = np.asarray(im.convert("L"), dtype=np.float32)
    return float((g < 235).mean()), float((g < 40).mean())


def test_chromium_screenshot_shows_the_images(result, tmp_path):
    _, _, _, report, _ = result
    inked, dark = _screenshot_stats(report, tmp_path / "shot.png")
    # text and tables alone ink a few per cent; the views and montages (black backgrounds) much more
    assert inked > 0.15 and dark > 0.04, (inked, dark)
    # the same page without its PNGs (broken images): the check above fails
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(report, bare / report.name)
    inked_bare, dark_bare = _screenshot_stats(bare / report.name, tmp_path / "bare.png")
    assert dark_bare < 0.01 and dark_bare < dark / 4, (inked_bare, dark_bare)


# --------------------------------------------------------------------------------------------------
# The cohort index
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def index(result):
    """A cohort index beside the result folder: one report, one failure, one skipped subject."""
    report = result[3]
    cohort = report.parents[2]  # the folder holding the result folder
    entries = [
        {"subject": "sub-02", "session": "ses-1", "status": "failed", "report": None, "time_s": 3.5,
         "message": "ValueError: mask 0 is empty <b>not markup</b>"},
        {"subject": "sub-01", "session": None, "status": "ok", "report": str(report.relative_to(cohort)), "time_s": 41.0, "message": None},
        {"subject": "sub-03", "session": None, "status": "skipped", "report": None, "time_s": None, "message": "no T2w stacks"},
    ]
    return write_index(entries, cohort / "index.html")


def test_index_links_resolve(result, index):
    report = result[3]
    page = _parse(index)
    files = _assert_self_contained(index, page)
    assert report.resolve() in files and (report.parent / "thumbnail.png").resolve() in files
    rows = [a for a in page.all("tr") if "data-status" in a]
    assert [r["data-status"] for r in rows] == ["ok", "failed", "skipped"]  # sorted by subject
    html = index.read_text()
    assert "&lt;b&gt;not markup&lt;/b&gt;" in html and "<b>not markup</b>" not in html
    assert '<b id="count-ok">1</b>' in html and '<b id="count-failed">1</b>' in html and '<b id="count-skipped">1</b>' in html


def test_chromium_renders_the_index(index):
    body = _probe(index)
    (thumb,) = [item.split("|") for item in body["data-images"].split(";")]
    assert int(thumb[1]) > 0 and 96 <= int(thumb[3]) <= 100  # decoded; 96 px + border
    assert body["data-sorted"] == "sub-03,sub-02,sub-01"  # clicked "time": ascending, unknown time first
