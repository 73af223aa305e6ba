"""Sub-commands of the ``gaussian-mri`` command line.

Each module here is one sub-command. It defines ``NAME`` (the sub-command, e.g. ``"svr"``),
``HELP`` (one line) and two functions::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...          # returns the exit code

Modules are discovered automatically by :mod:`gaussian_mri.cli`; heavy imports (torch, SimpleITK)
belong inside ``run`` so that ``gaussian-mri --help`` stays fast.
"""
