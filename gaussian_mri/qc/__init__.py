"""Quality-control reports of SVR reconstructions: one self-contained HTML page per result, a cohort index.

* :func:`write_report` -- ``<result_dir>/qc/report.html`` and its PNGs, from what ``gaussian-mri svr``
  wrote (``recon.nii.gz``, ``recon_mask.nii.gz``, ``slices.tsv``, ``report.json``) and the input stacks;
* :func:`write_index` -- a cohort index page linking the reports.

Pages use only relative links, inline CSS and local PNGs (nothing is fetched from the network) and
are written atomically. Drawing needs matplotlib (Agg backend); without it both raise
:class:`gaussian_mri._optional.MissingDependencyError` saying to ``pip install matplotlib``.
"""

from __future__ import annotations

__all__ = ["QC_DIR", "REPORT_NAME", "THUMBNAIL_NAME", "write_index", "write_report", "write_report_safely"]

from .index import write_index
from .report import QC_DIR, REPORT_NAME, THUMBNAIL_NAME, write_report


def write_report_safely(result_dir, stacks, masks=None, title: str = "", *, volume=None, mask=None,
                        notes: list[str] | None = None, logger=None):
    """:func:`write_report` for a reconstruction that is already saved: the one policy of the commands and
    the cohort. Any failure (matplotlib missing, an unreadable input, a bug in the report) is logged as a
    warning and appended to ``notes``, never raised: a report must never lose a finished reconstruction.
    Returns the path of ``report.html`` or ``None``."""
    import logging

    from .._optional import MissingDependencyError

    logger = logger or logging.getLogger(__name__)
    try:
        return write_report(result_dir, stacks, masks, title=title, volume=volume, mask=mask)
    except MissingDependencyError as exc:
        message = f"QC report not written: {exc}"
        logger.warning("%s", message)
    except Exception as exc:  # noqa: BLE001 - the reconstruction files are complete whatever happens here
        message = f"QC report not written ({type(exc).__name__}: {exc}); the reconstruction files are complete"
        logger.warning("%s", message, exc_info=True)
    if notes is not None:
        notes.append(message)
    return None
