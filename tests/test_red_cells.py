"""The red cells' scale: a field without a white cell still tells a platelet from a white cell."""

import numpy as np

from napari_vptv.core.wbc.cell_rules import MIN_REFERENCE_PER_RED_CELL, drop_non_white_cells
from napari_vptv.core.wbc.red_cells import red_cell_diameter

PLASMA, RED, PURPLE = (235, 215, 200), (205, 140, 160), (90, 50, 140)


def _disc(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2


def _smear(rng, radius=14, pale_centre=True, shape=(240, 320)):
    """Plasma with noise and red cells of ``radius`` px (pale centres), some touching."""
    img = np.empty((*shape, 3), np.float64)
    img[:] = PLASMA
    for cy in range(radius + 4, shape[0] - radius, 2 * radius + 6):
        for cx in range(radius + 4, shape[1] - radius, 2 * radius + 3):
            c = (cy + rng.integers(-3, 4), cx + rng.integers(-2, 3))
            img[_disc(shape, c, radius)] = RED
            if pale_centre:
                img[_disc(shape, c, radius // 3)] = np.add(RED, PLASMA) / 2
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_red_cell_diameter_reads_the_red_cells_size_at_any_scale():
    rng = np.random.default_rng(0)
    for radius in (10, 14, 20):
        d = red_cell_diameter(_smear(rng, radius, shape=(12 * radius, 16 * radius)))
        # the inscribed diameter, pale centres making it smaller but never larger
        assert 1.0 * radius <= d <= 2.05 * radius


def test_no_estimate_without_clear_red_cells():
    rng = np.random.default_rng(1)
    plasma = np.clip(np.full((200, 200, 3), PLASMA, float) + rng.normal(0, 4, (200, 200, 3)), 0, 255)
    assert red_cell_diameter(plasma.astype(np.uint8)) == 0.0  # no contrast
    few = np.full((200, 200, 3), PLASMA, np.uint8)
    few[_disc(few.shape[:2], (100, 100), 15)] = RED
    assert red_cell_diameter(few) == 0.0  # one red cell: too few to be a scale
    assert red_cell_diameter(np.zeros((50, 50), np.uint8)) == 0.0  # not RGB
    smear = _smear(rng)
    assert red_cell_diameter(smear, np.zeros(smear.shape[:2], bool)) == 0.0  # no background


def _labels_of(img, cells):
    lab = np.zeros(img.shape[:2], np.int32)
    for centre, radius, nucleus_radius in cells:
        lab[_disc(lab.shape, centre, radius)] = 1
        lab[_disc(lab.shape, centre, nucleus_radius)] = 2
    return lab


def test_a_field_without_white_cell_loses_its_platelets_and_keeps_a_small_lymphocyte():
    rng = np.random.default_rng(2)
    img = _smear(rng, radius=14)  # red cells 28 px across
    platelets = [((60, 80), 6, 5), ((150, 200), 5, 4), ((200, 40), 7, 6)]  # 10-14 px: 2-4 µm
    lymphocyte = [((120, 160), 14, 11)]  # one red cell across
    lab = _labels_of(img, platelets + lymphocyte)
    for centre, radius, _ in platelets + lymphocyte:
        img[_disc(lab.shape, centre, radius)] = PURPLE
    red = red_cell_diameter(img, lab == 0)
    assert red > 0
    # the white-cell estimate came from the platelets themselves: the rule alone keeps them
    assert drop_non_white_cells(lab, 12.0)[1] == 0
    out, n = drop_non_white_cells(lab, 12.0, red_cell_diameter=red)
    assert n == len(platelets)
    assert out[120, 160] == 2 and (out > 0).sum() == (_labels_of(img, lymphocyte) > 0).sum()
    # the red cells alone give the rule a scale
    assert drop_non_white_cells(lab, None, red_cell_diameter=red)[1] == len(platelets)
    # a platelet on a red cell: a red cell's size, a platelet's nucleus
    on_red = _labels_of(img, lymphocyte + [((60, 80), 15, 6)])
    assert drop_non_white_cells(on_red, 12.0)[1] == 0
    out, n = drop_non_white_cells(on_red, 12.0, red_cell_diameter=red)
    assert n == 1 and out[60, 80] == 0 and out[120, 160] == 2
    # a floor, never a cap: a field's big white cells still set the reference
    big = _labels_of(img, [((120, 160), 40, 25), ((60, 80), 9, 8)])
    assert drop_non_white_cells(big, 80.0, red_cell_diameter=red)[1] == 1
    assert MIN_REFERENCE_PER_RED_CELL * red < 80.0


def test_a_cell_narrower_than_a_red_cell_is_not_a_white_cell():
    from napari_vptv.core.wbc.cell_rules import MIN_CELL_PER_RED_CELL

    rng = np.random.default_rng(3)
    img = _smear(rng, radius=14)
    red = red_cell_diameter(img)
    # a platelet clump against a red cell, labelled a small cell: 20 px, a large nucleus
    clump = ((60, 80), 10, 9)
    lymphocyte = ((150, 200), 14, 11)  # one red cell across
    lab = _labels_of(img, [clump, lymphocyte])
    assert 2 * clump[1] < MIN_CELL_PER_RED_CELL * red < 2 * lymphocyte[1]
    out, n = drop_non_white_cells(lab, 12.0, red_cell_diameter=red)
    assert n == 1 and out[60, 80] == 0 and out[150, 200] == 2
