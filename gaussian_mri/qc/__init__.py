"""Quality-control reports of SVR reconstructions: one self-contained HTML page per result, a cohort index.

* :func:`write_report` -- ``<result_dir>/qc/report.html`` and its PNGs, from what ``gaussian-mri svr``
  wrote (``recon.nii.gz``, ``recon_mask.nii.gz``, ``slices.tsv``, ``report.json``) and the input stacks;
* :func:`write_index` -- a cohort index page linking the reports.

Pages use only relative links, inline CSS and local PNGs (nothing is fetched from the network) and
are written atomically. Drawing needs matplotlib (Agg backend); without it both raise
:class:`gaussian_mri._optional.MissingDependencyError` saying to ``pip install matplotlib``.
"""

from __future__ import annotations

__all__ = ["QC_DIR", "REPORT_NAME", "THUMBNAIL_NAME", "write_index", "write_report"]

from .index import write_index
from .report import QC_DIR, REPORT_NAME, THUMBNAIL_NAME, write_report
