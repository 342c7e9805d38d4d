"""The image-adapted variational WBC method: colour model refitted per image, then
combined with the network's probabilities (core.wbc.adapt.adapted_segment)."""

import numpy as np

from napari_vptv.core.io.samples import load_sample
from napari_vptv.core.solver.segment import prepare_image, vptv_segment
from napari_vptv.core.wbc.adapt import adapted_segment, fraction_interval, gaussian_from_probabilities


def test_weight_zero_is_the_refitted_colour_model_alone():
    image = load_sample("wbc_016")[0][..., :3]
    from napari_vptv.nn.weights import predict_wbc

    p = predict_wbc(image, method="unet", details=True, require_nucleus=False, augment=1).probabilities
    alone = adapted_segment(image, p, network_weight=0.0)
    model = gaussian_from_probabilities(prepare_image(image, -1), p)
    assert model is not None
    expected = vptv_segment(
        image,
        n_classes=3,
        channel_axis=-1,
        class_model=model,
        similarity="gaussian",
        volume_bounds=fraction_interval(p),
        volume_mode="interval",
        em_update=True,
        epsilon=0.05,
        tv_weight=0.05,
    )
    assert np.array_equal(alone.labels, expected.labels)


def test_the_network_term_counts_and_is_weighted():
    image = load_sample("wbc_016")[0][..., :3]
    from napari_vptv.nn.weights import predict_wbc

    p = predict_wbc(image, method="unet", details=True, require_nucleus=False, augment=1).probabilities
    # the network is made to claim a background square as nucleus
    p = p.copy()
    p[:, 5:45, 5:45] = np.array([0.02, 0.02, 0.96])[:, None, None]
    # the weight with a covariance per class (the square holds slide and a red cell's
    # edge: with the default's shrunk covariances 0.82 of it stays background, the slide
    # pixels 0.90, docs/results.md)
    kw = {"own_covariance_share": 1.0}
    colour_only = adapted_segment(image, p, network_weight=0.0, **kw).labels
    heavy = adapted_segment(image, p, network_weight=50.0, **kw).labels
    both = adapted_segment(image, p, network_weight=1.0, **kw).labels
    square = (slice(5, 45), slice(5, 45))
    # the slide's colour wins alone; a heavily weighted network wins; equal weight: the
    # colours of this clear background still win over a confident but wrong network
    assert (colour_only[square] == 0).mean() > 0.95
    assert (heavy[square] == 2).mean() > 0.95
    assert (both[square] == 0).mean() > 0.9
    # the cell itself: the combination agrees with the colour model almost everywhere
    assert (both == colour_only).mean() > 0.97


def test_no_cell_gives_none():
    rng = np.random.default_rng(0)
    image = (220 + rng.integers(0, 10, (64, 64, 3))).astype(np.uint8)
    p = np.zeros((3, 64, 64))
    p[0] = 1.0
    assert adapted_segment(image, p) is None


def test_colour_smoothing_changes_only_what_the_colour_model_sees():
    image = load_sample("wbc_016")[0][..., :3]
    from napari_vptv.nn.weights import predict_wbc

    p = predict_wbc(image, method="unet", details=True, require_nucleus=False, augment=1).probabilities
    plain = adapted_segment(image, p, colour_sigma=0.0).labels
    smooth = adapted_segment(image, p, colour_sigma=1.0).labels
    assert smooth.shape == plain.shape and not np.array_equal(smooth, plain)
    assert (smooth == plain).mean() > 0.97


def test_default_smoothing_is_relative_to_the_cell_diameter():
    """colour_sigma=None (the default): COLOUR_SIGMA_PER_DIAMETER x diameter pixels, so
    the same cell is smoothed alike at every magnification; no diameter, no smoothing."""
    from napari_vptv.core.wbc.adapt import COLOUR_SIGMA, COLOUR_SIGMA_PER_DIAMETER

    assert COLOUR_SIGMA is None
    image = load_sample("wbc_016")[0][..., :3]
    from napari_vptv.nn.weights import predict_wbc

    p = predict_wbc(image, method="unet", details=True, require_nucleus=False, augment=1).probabilities
    d = 2.0 / COLOUR_SIGMA_PER_DIAMETER
    np.testing.assert_array_equal(
        adapted_segment(image, p, diameter=d).labels, adapted_segment(image, p, colour_sigma=2.0).labels
    )
    np.testing.assert_array_equal(adapted_segment(image, p).labels, adapted_segment(image, p, colour_sigma=0.0).labels)


def test_default_labels_are_the_argmax_of_the_combined_solve():
    """ROUNDING = "argmax": the default's interval is a soft prior around the network's
    fractions, so its labels are the argmax of the solve's probabilities; "volume"
    still gives the volume-respecting rounding."""
    from napari_vptv.core.wbc.adapt import ROUNDING

    assert ROUNDING == "argmax"
    image = load_sample("wbc_016")[0][..., :3]
    from napari_vptv.nn.weights import predict_wbc

    p = predict_wbc(image, method="unet", details=True, require_nucleus=False, augment=1).probabilities
    r = adapted_segment(image, p)
    np.testing.assert_array_equal(r.labels, np.asarray(r.probabilities).argmax(0))
    rounded = adapted_segment(image, p, rounding="volume")
    assert rounded.labels.shape == r.labels.shape and (rounded.labels == r.labels).mean() > 0.97


def test_shrunk_covariances_split_a_mixed_pixel_nearer_the_midpoint():
    """A pixel halfway between a class of tight colour (the empty slide) and one of wide
    colour (cytoplasm), as on a blurred cell rim: with a covariance per class the wide
    class takes it by far; with one shared covariance the two tie; halfway between."""
    import pytest
    import torch

    from napari_vptv.core.solver.costs import GaussianModel
    from napari_vptv.core.wbc.adapt import shrink_covariances

    eye = np.eye(3)
    model = GaussianModel(np.array([[0.9] * 3, [0.5] * 3]), np.stack([1e-4 * eye, 1e-2 * eye]), kind="gaussian")
    mixed = torch.full((1, 3, 1, 1), 0.7, dtype=torch.float64)

    def margin(m):  # cost of the tight class minus that of the wide one
        c = m.cost(mixed)[0, :, 0, 0].numpy()
        return c[0] - c[1]

    assert shrink_covariances(model, 1.0) is model
    shared = shrink_covariances(model, 0.0)
    np.testing.assert_allclose(shared.covariances[0], shared.covariances[1])
    np.testing.assert_array_equal(shared.means, model.means)
    assert margin(model) > 100
    assert abs(margin(shared)) < 1e-9
    assert 0 < margin(shrink_covariances(model, 0.5)) < margin(model)
    with pytest.raises(ValueError):
        shrink_covariances(model, 1.5)
