"""Correction of an existing label mask with VPTV: the driver
(:mod:`~napari_vptv.core.correct.mask`), the per-object solve and its evidence."""
