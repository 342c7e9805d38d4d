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


def _platelet_field(seed=0):
    """A 480 x 640 smear field without a white cell: pink red cells (60 px) on plasma,
    and small purple platelets (16-22 px) between them."""
    rng = np.random.default_rng(seed)
    img = np.zeros((480, 640, 3), np.float32) + np.array([228, 214, 222], np.float32)
    yy, xx = np.indices(img.shape[:2])
    for cy in range(40, 480, 80):
        for cx in range(40 + (cy // 80 % 2) * 40, 640, 80):
            r = np.hypot(yy - cy - rng.integers(-6, 7), xx - cx - rng.integers(-6, 7))
            img[r < 30] = (205, 120, 140)
            img[r < 10] = (215, 150, 165)  # the pale centre
    for _ in range(12):
        cy, cx = rng.integers(20, 460), rng.integers(20, 620)
        img[np.hypot(yy - cy, xx - cx) < rng.uniform(8, 11)] = (110, 60, 150)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_a_field_of_red_cells_and_platelets_is_not_scaled_up_to_make_cells():
    from napari_vptv.core.wbc.red_cells import red_cell_diameter
    from napari_vptv.nn.predict import MIN_WHITE_PER_RED_CELL, predict_cells
    from napari_vptv.nn.weights import load_pretrained

    field = _platelet_field()
    red = red_cell_diameter(field)
    assert 50 < red < 70
    model, meta = load_pretrained("vptv-unet")
    pred = predict_cells(model, meta, field)
    # the diameter never falls below a red cell's: the platelets stay platelet-sized
    assert pred.diameter == 0 or pred.diameter >= MIN_WHITE_PER_RED_CELL * 0.9 * red
