"""Large images in overlapping tiles: one scale, cells stitched without seams or duplicates."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_vptv import tiles
from napari_vptv.api import segment_image
from napari_vptv.core.io.samples import load_sample
from napari_vptv.options import SegmentOptions

pytest.importorskip("torch")
pytest.importorskip("dask")


@pytest.fixture(scope="module")
def straddling():
    """A sample white cell on plasma, its centre on the boundary of two 256 px tiles."""
    img, mask = load_sample("001")
    field = np.empty((300, 512, 3), np.uint8)
    field[:] = np.median(img[mask == 0], axis=0).astype(np.uint8)
    field[:, 106:406] = img
    truth = np.zeros(field.shape[:2], np.int32)
    truth[:, 106:406] = mask
    assert truth[:, 250:262].any()  # the cell crosses x = 256
    return field, truth


def _dice(labels, truth):
    p, q = labels > 0, truth > 0
    return 2 * (p & q).sum() / (p.sum() + q.sum())


def test_a_cell_on_a_tile_boundary_is_one_cell_with_the_untiled_dice(straddling):
    field, truth = straddling
    opts = SegmentOptions().resolve(True)
    calls = []
    whole = segment_image(field, opts)
    tiled = tiles.segment_in_tiles(
        field,
        opts,
        segment_image,
        white_cell_rule=True,
        tile=256,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert tiled.info["tiles"]["count"] == 2 and calls == [(1, 2), (2, 2)]
    assert tiled.diameter == pytest.approx(whole.diameter)  # the same working scale
    cells, n = ndi.label(tiled.labels > 0, np.ones((3, 3), bool))
    assert n == 1 and cells[150, 250] == cells[150, 262] > 0  # one cell across the seam
    assert abs(_dice(tiled.labels, truth) - _dice(whole.labels, truth)) <= 0.01
    assert _dice(tiled.labels, truth) > 0.9
    assert tiled.probabilities.shape == (3, *field.shape[:2])
    assert (tiled.labels != whole.labels).mean() < 0.005  # no seam


def test_tiles_in_two_threads_give_the_same_labels(straddling):
    import threading

    field, _ = straddling
    opts = SegmentOptions().resolve(True)
    threads, calls = set(), []

    def segment(block, o):
        threads.add(threading.get_ident())
        return segment_image(block, o)

    def run(workers):
        threads.clear()
        return tiles.segment_in_tiles(
            field,
            opts,
            segment,
            white_cell_rule=True,
            tile=128,
            workers=workers,
            progress=lambda done, total: calls.append((workers, done, total)),
        )

    one, n_one = run(1), len(threads)
    two, n_two = run(2), len(threads)
    assert (n_one, n_two) == (1, 2)
    assert one.info["tiles"]["count"] == 2
    np.testing.assert_array_equal(one.labels, two.labels)
    np.testing.assert_allclose(one.probabilities, two.probabilities)
    assert [c[1:] for c in calls if c[0] == 2] == [(1, 2), (2, 2)]  # counted once each, in order
    assert tiles.tile_workers(4, 10**6, threads=8) == 4 and tiles.tile_workers(4, 10**6, threads=1) == 1


def test_progress_may_stop_the_tiles(straddling):
    field, _ = straddling

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiles.segment_in_tiles(
            field, SegmentOptions().resolve(True), segment_image, white_cell_rule=True, tile=128, progress=stop
        )


def test_segment_image_tiles_large_images(straddling, monkeypatch):
    field, truth = straddling
    monkeypatch.setattr(tiles, "TILED_ABOVE_PIXELS", 100 * 100)
    monkeypatch.setattr(tiles, "TILE", 256)
    seen = []
    result = segment_image(field, callback=lambda done, total: seen.append(total))
    assert result.info["tiles"]["count"] == 2 and seen == [2, 2]
    assert _dice(result.labels, truth) > 0.9
    fixed = SegmentOptions(method="vptv", volume_mode="none").resolve(True)  # the fixed colour model
    assert fixed.method == "vptv" and not tiles.needs_tiles(field, fixed)
    assert not tiles.needs_tiles(field[..., 0], SegmentOptions().resolve(False))  # grey


class _RecordingBar:
    """A tqdm-like bar that records what the batch engine tells it."""

    made = []

    def __init__(self, total, desc):
        self.total, self.desc, self.n, self.closed = total, desc, 0, False
        _RecordingBar.made.append(self)

    def update(self, k):
        self.n += k

    def close(self):
        self.closed = True


def test_the_batch_engine_reports_the_tiles_of_a_large_image(straddling, monkeypatch, tmp_path):
    from PIL import Image

    from napari_vptv.api import SegmentFn
    from napari_vptv.core.batch.run import segment_file

    field, _ = straddling
    monkeypatch.setattr(tiles, "TILED_ABOVE_PIXELS", 100 * 100)
    monkeypatch.setattr(tiles, "TILE", 256)
    Image.fromarray(field).save(tmp_path / "field.png")
    _RecordingBar.made.clear()
    res = segment_file(
        tmp_path / "field.png", tmp_path / "out", SegmentFn(SegmentOptions()), progress_factory=_RecordingBar
    )
    assert res.status == "done"
    (bar,) = _RecordingBar.made
    assert (bar.total, bar.n, bar.closed) == (2, 2, True) and "field.png" in bar.desc


def test_tiles_on_a_distributed_cluster(straddling, monkeypatch, tmp_path):
    distributed = pytest.importorskip("distributed")
    import cloudpickle
    from PIL import Image

    from napari_vptv.api import SegmentFn
    from napari_vptv.core.batch.run import segment_file
    from napari_vptv.core.io.files import read_mask

    field, _ = straddling
    opts = SegmentOptions().resolve(True)
    here = tiles.segment_in_tiles(field, opts, segment_image, white_cell_rule=True, tile=128, workers=1)
    calls = []
    monkeypatch.setattr(tiles, "TILED_ABOVE_PIXELS", 100 * 100)
    monkeypatch.setattr(tiles, "TILE", 128)
    Image.fromarray(field).save(tmp_path / "field.png")
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        with distributed.get_task_stream(client=client) as api_tasks:
            there = tiles.segment_in_tiles(
                field,
                opts,
                segment_image,
                white_cell_rule=True,
                tile=128,
                scheduler=client,
                progress=lambda done, total: calls.append((done, total)),
            )
        with distributed.get_task_stream(client=client) as file_tasks:
            res = segment_file(tmp_path / "field.png", tmp_path / "out", SegmentFn(SegmentOptions()), scheduler=client)
        assert len(api_tasks.data) >= 2 and len(file_tasks.data) >= 2  # the tiles ran on the cluster
        assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0  # nothing left behind
    np.testing.assert_array_equal(here.labels, there.labels)
    assert calls == [(1, 2), (2, 2)]
    assert res.status == "done"
    np.testing.assert_array_equal(read_mask(res.output), here.labels)
    # what a cluster's workers receive must survive pickling
    assert cloudpickle.loads(cloudpickle.dumps(tiles._TileSegmenter(segment_image, opts))).options == opts
