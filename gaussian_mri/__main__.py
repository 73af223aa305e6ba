"""``python -m gaussian_mri`` is the ``gaussian-mri`` command."""

import sys

from .cli import main

sys.exit(main())
