"""The white-cell diameter estimate ignores a lace of plasma texture taken for one cell."""

import numpy as np

from napari_vptv.nn.predict import MIN_CELL_SOLIDITY
from napari_vptv.nn.sources import cell_diameter


def test_a_lace_region_is_not_a_cell_when_the_diameter_is_estimated():
    lab = np.zeros((300, 400), np.int32)
    yy, xx = np.indices(lab.shape)
    lace = (np.sin(yy / 6.0) * np.sin(xx / 6.0) > -0.2) & (xx > 120)  # one connected region full of holes
    lab[lace] = 1
    for cy, cx in ((60, 55), (220, 55)):
        lab[np.hypot(yy - cy, xx - cx) < 30] = 1
        lab[np.hypot(yy - cy, xx - cx) < 15] = 2
    assert cell_diameter(lab) > 150  # the lace alone sets the old estimate
    assert abs(cell_diameter(lab, min_solidity=MIN_CELL_SOLIDITY) - 60) < 2
    only_cells = lab.copy()
    only_cells[lace] = 0
    assert cell_diameter(only_cells, min_solidity=MIN_CELL_SOLIDITY) == cell_diameter(only_cells)
