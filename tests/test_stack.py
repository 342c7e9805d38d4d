"""The napari-free stack generator (napari_vptv.core.batch.stack)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from napari_vptv.core.batch.stack import (
    StackSlice,
    label_dtype,
    segment_stack,
    segment_stack_array,
    stack_layout,
)
from napari_vptv.core.solver.segment import vptv_segment


def threshold(image, *, channel_axis=None):
    """A tiny real segmentation: mean over channels > 0.5."""
    img = np.asarray(image, dtype=float)
    if channel_axis is not None:
        img = img.mean(axis=channel_axis)
    return (img > 0.5).astype(np.int32)


def squares(n, size=32, seed=0):
    """Grey stack with a bright square of growing size per slice (+ mild noise)."""
    rng = np.random.default_rng(seed)
    stack = rng.normal(0.2, 0.05, (n, size, size))
    for i in range(n):
        a = 6 + 2 * i
        stack[i, 4 : 4 + a, 4 : 4 + a] += 0.6
    return stack.astype(np.float32)


def test_layout():
    assert stack_layout((5, 7, 8)) == ((5,), (5, 7, 8))
    assert stack_layout((2, 5, 7, 8, 3), rgb=True) == ((2, 5), (2, 5, 7, 8))
    assert stack_layout((2, 5, 7, 8), mode="volume") == ((2,), (2, 5, 7, 8))
    assert stack_layout((7, 8)) == ((), (7, 8))
    assert stack_layout((5, 7, 8), mode="volume") == ((), (5, 7, 8))
    assert label_dtype(3) == np.uint8 and label_dtype(300) == np.int32


@pytest.mark.parametrize(
    "shape, kwargs, match",
    [
        ((7,), {}, "at least 2-D"),
        ((7, 8), {"mode": "volume"}, "at least 3-D"),
        ((7, 8, 3), {"rgb": True, "mode": "volume"}, "at least 3-D"),
        ((7, 8, 5), {"rgb": True}, "colour axis"),
        ((0, 7, 8), {}, "zero-size"),
        ((4, 7, 8), {"mode": "planes"}, "mode must be"),
    ],
)
def test_bad_layout(shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        next(segment_stack(np.zeros(shape), threshold, **kwargs))


def test_bad_on_error():
    with pytest.raises(ValueError, match="on_error"):
        next(segment_stack(np.zeros((2, 4, 4)), threshold, on_error="ignore"))


def test_grey_stack_slices_in_order():
    stack = squares(4)
    items = list(segment_stack(stack, threshold))
    assert [it.index for it in items] == [(0,), (1,), (2,), (3,)]
    assert [(it.done, it.total) for it in items] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    for i, it in enumerate(items):
        assert isinstance(it, StackSlice)
        assert it.labels.shape == (32, 32)
        side = 6 + 2 * i
        assert it.labels.sum() == side * side
        np.testing.assert_allclose(it.volumes, [1 - side**2 / 1024, side**2 / 1024])


def test_rgb_tzyx_stack_passes_channel_axis():
    seen = []

    def fn(image, *, channel_axis=None):
        seen.append((image.shape, channel_axis))
        return threshold(image, channel_axis=channel_axis)

    data = np.zeros((2, 3, 10, 12, 3), np.uint8)
    data[1, 2, 2:5, 2:5] = 255
    out = segment_stack_array(data, fn, rgb=True, n_classes=2)
    assert out.shape == (2, 3, 10, 12) and out.dtype == np.uint8
    assert seen == [((10, 12, 3), -1)] * 6
    assert out.sum() == 9 and out[1, 2, 2:5, 2:5].all()


def test_volume_mode_yields_3d_pieces():
    data = np.zeros((2, 4, 6, 6))
    data[1, 1:3, 1:4, 1:4] = 1
    items = list(segment_stack(data, threshold, mode="volume"))
    assert [it.index for it in items] == [(0,), (1,)]
    assert items[0].labels.shape == (4, 6, 6)
    assert items[1].labels.sum() == 18
    single = list(segment_stack(data[1], threshold, mode="volume"))
    assert len(single) == 1 and single[0].index == () and single[0].total == 1


def test_single_2d_image():
    img = squares(1)[0]
    (item,) = segment_stack(img, threshold)
    assert item.index == () and item.done == item.total == 1
    out = segment_stack_array(img, threshold)
    assert out.shape == img.shape and out.sum() == 36


def test_real_solver_per_slice_volumes():
    """Each slice of a stack segmented by VPTV hits the requested fractions."""
    stack = squares(3, size=40)
    fn = functools.partial(vptv_segment, n_classes=2, volumes=[0.8, 0.2], max_num_iter=40)
    items = list(segment_stack(stack, fn))
    assert len(items) == 3
    for it in items:
        assert it.labels.shape == (40, 40)
        np.testing.assert_allclose(it.volumes, [0.8, 0.2], atol=0.005)
        assert it.result.volume_spec.mode == "exact"


def test_errors_raise_or_skip():
    stack = squares(3)
    stack[1, 3, 3] = np.nan
    fn = functools.partial(vptv_segment, n_classes=2, max_num_iter=5)
    with pytest.raises(ValueError, match="NaN"):
        list(segment_stack(stack, fn))
    items = list(segment_stack(stack, fn, on_error="skip"))
    assert [it.labels is None for it in items] == [False, True, False]
    assert isinstance(items[1].error, ValueError) and "NaN" in str(items[1].error)
    assert items[2].done == 3


def test_wrong_label_shape_is_reported():
    with pytest.raises(ValueError, match="labels of shape"):
        list(segment_stack(np.zeros((2, 5, 5)), lambda im, channel_axis=None: np.zeros((4, 4), int)))


def test_closing_stops_between_slices():
    calls = []

    def fn(image, *, channel_axis=None):
        calls.append(1)
        return threshold(image)

    gen = segment_stack(squares(5), fn)
    next(gen)
    next(gen)
    gen.close()
    assert len(calls) == 2


def test_dask_stack_read_slice_by_slice():
    """A dask-backed stack is computed one chunk per slice, never whole."""
    da = pytest.importorskip("dask.array")
    computed = []
    base = squares(5)

    def load(block, block_info=None):
        z = block_info[0]["chunk-location"][0]
        computed.append(z)
        return block

    lazy = da.from_array(base, chunks=(1, 32, 32)).map_blocks(load, dtype=base.dtype)
    for it in segment_stack(lazy, threshold):
        # when slice z is done, only chunks 0..z have been computed, each once
        assert computed == list(range(it.index[0] + 1))
        np.testing.assert_array_equal(it.labels, threshold(base[it.index]))


def test_warm_start_passes_previous_result_and_keeps_labels():
    """warm_start=True hands each slice the previous slice's result; with the real
    solver the labels match a cold start and the iterations do not grow."""
    seen = []

    def fn(image, *, channel_axis=None, warm_start=None):
        seen.append(warm_start)
        return threshold(image, channel_axis=channel_axis)

    stack = squares(3)
    list(segment_stack(stack, fn, warm_start=True))
    assert seen[0] is None and seen[1] is not None and np.array_equal(seen[2], threshold(stack[1]))

    solver = functools.partial(
        vptv_segment,
        n_classes=2,
        volume_mode="interval",
        volume_bounds=([0.5, 0.05], [0.95, 0.5]),
        epsilon=0.05,
        tv_weight=0.05,
    )
    smooth = np.repeat(squares(1, size=40), 4, axis=0)
    smooth = smooth + np.random.default_rng(1).normal(0, 0.01, smooth.shape).astype(np.float32)
    cold = list(segment_stack(smooth, solver))
    warm = list(segment_stack(smooth, solver, warm_start=True))
    for c, w in zip(cold, warm):
        assert np.mean(c.labels == w.labels) > 0.98  # close, not identical: warm starts are opt-in
    assert sum(w.result.n_iter for w in warm[1:]) < sum(c.result.n_iter for c in cold[1:])


def test_warm_start_needs_a_keyword():
    with pytest.raises(ValueError, match="warm_start"):
        list(segment_stack(squares(2), threshold, warm_start=True))
