"""Cardiac cine: numerical phantom (:mod:`gaussian_mri.cine.phantom`) and cine reconstruction."""
