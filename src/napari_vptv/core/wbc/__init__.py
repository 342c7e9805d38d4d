"""White blood cells: the WBC preset (colour models, volume priors), its per-image
adaptation, the cell rules and the per-cell measurements."""
