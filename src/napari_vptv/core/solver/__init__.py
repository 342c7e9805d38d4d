"""The VPTV solver: the loops of Algorithm 1, the volume step, the cost models and
:func:`~napari_vptv.core.solver.segment.vptv_segment`, the numpy-in / numpy-out entry."""
