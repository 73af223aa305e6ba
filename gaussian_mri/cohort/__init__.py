"""Cohorts: GaussianSVR as a BIDS App (``gaussian-mri bids``), sequential or on Dask distributed.

* :mod:`.bids` -- find the T2w stacks (and brain masks) of every subject/session of a BIDS dataset;
* :mod:`.derivatives` -- the BIDS-derivatives output: names, ``dataset_description.json``, the
  completeness/validity check that lets a re-run skip finished subjects, atomic publication;
* :mod:`.job` -- one subject/session (what a worker runs; failures are recorded, never raised);
* :mod:`.runner` -- the participant level: a loop in this process, a local Dask cluster (one worker per
  GPU, or a CPU split), or an existing Dask scheduler (SLURM/PBS via dask-jobqueue, Kubernetes);
* :mod:`.group` -- the group level: ``group.tsv`` of every run and the cohort's QC index page.

Command-line conventions follow the BIDS Apps (K. J. Gorgolewski et al., "BIDS apps: Improving ease
of use, accessibility, and reproducibility of neuroimaging data analysis methods", PLoS Comput Biol
13(3): e1005209, 2017): ``gaussian-mri bids BIDS_DIR OUTPUT_DIR participant|group
[--participant-label ...] [--session-label ...]``; outputs follow the BIDS derivatives specification
(https://bids-specification.readthedocs.io/en/stable/derivatives/introduction.html).
No module here imports torch at import time.
"""

from .bids import CohortError, Run, find_runs
from .group import write_group
from .job import run_subject
from .runner import plan_local_cluster, run_participants

__all__ = ["CohortError", "Run", "find_runs", "plan_local_cluster", "run_participants", "run_subject", "write_group"]
