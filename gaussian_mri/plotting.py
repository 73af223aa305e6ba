"""PNG snapshots of volumes (matplotlib, Agg backend), used by the CLI and the benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._atomic import atomic_path


def save_orthogonal_views(image, path, *, mask=None, title: str | None = None, others: dict | None = None) -> Path:
    """PNG of the three orthogonal central planes of ``image`` (and of ``others`` in more rows).

    Raises :class:`gaussian_mri._optional.MissingDependencyError` (an ``ImportError``) without matplotlib.
    """
    from ._optional import pyplot

    plt = pyplot("the orthogonal-views PNG")

    rows = {title or "reconstruction": image, **(others or {})}
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for r, (name, img) in enumerate(rows.items()):
        data = np.asarray(img.data, dtype=np.float32)
        if mask is not None and r == 0:
            m = np.asarray(mask.data) > 0
            centre = [int(np.mean(np.nonzero(m.any(axis=tuple(a for a in range(3) if a != ax)))[0])) for ax in range(3)]
        else:
            centre = [s // 2 for s in data.shape]
        vmax = np.percentile(data, 99.5) or 1.0
        planes = [data[centre[0]], data[:, centre[1]], data[:, :, centre[2]]]
        for c, (pl, lab) in enumerate(zip(planes, ("k (slice) plane", "j plane", "i plane"))):
            axes[r, c].imshow(pl, cmap="gray", vmin=0, vmax=vmax, origin="lower")
            axes[r, c].set_title(f"{name}: {lab}", fontsize=8)
            axes[r, c].axis("off")
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return path
