"""Bad input, files as cameras and scripts write them: one image reader and one mask
reader for every command (bit depths, dtypes, TIFF pages, palette and CMYK colours,
float / colour / palette masks). Each test failed before the reader it covers.
"""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_vptv.cli import main
from napari_vptv.core.io import files as io
from napari_vptv.core.io.samples import load_sample, sample_ids
from napari_vptv.options import SegmentOptions
from test_faults import _eval_folders, _grey_u8, _one_line


# --------------------------------------------------------------------------- #
# one image reader: bit depths, dtypes, pages, colour models
# --------------------------------------------------------------------------- #
def _rgb():
    return load_sample(sample_ids()[0])[0]


#: the same 8-bit image in other dtypes / bit depths (as cameras and scripts write it)
ENCODINGS = {
    "uint16 x257": lambda a: a.astype(np.uint16) * 257,
    "uint16 << 8": lambda a: a.astype(np.uint16) << 8,
    "12 bits in uint16": lambda a: a.astype(np.uint16) << 4,
    "uint16 0..255": lambda a: a.astype(np.uint16),
    "int8 offset": lambda a: (a.astype(np.int16) - 128).astype(np.int8),
    "int16 x128": lambda a: a.astype(np.int16) * 128,
    "int32": lambda a: a.astype(np.int32),
    "float32 / 255": lambda a: a.astype(np.float32) / 255,
    "float64 0..255": lambda a: a.astype(np.float64),
    "uint32 << 24": lambda a: a.astype(np.uint32) << 24,
}


def test_16_bit_and_12_in_16_bit_rgb_tiff_give_the_8_bit_labels(tmp_path, capsys):
    rgb = _rgb()
    iio.imwrite(tmp_path / "u8.png", rgb)
    tifffile.imwrite(tmp_path / "u16.tif", rgb.astype(np.uint16) * 257, photometric="rgb")
    tifffile.imwrite(tmp_path / "u12.tif", rgb.astype(np.uint16) << 4, photometric="rgb")
    rc = main(
        [
            "segment",
            str(tmp_path / "u8.png"),
            str(tmp_path / "u16.tif"),
            str(tmp_path / "u12.tif"),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    ref = iio.imread(tmp_path / "o" / "u8.png")
    assert (ref > 0).mean() > 0.05  # cells found
    for name in ("u16", "u12"):
        np.testing.assert_array_equal(iio.imread(tmp_path / "o" / f"{name}.png"), ref)
    meta = io.read_label_metadata(tmp_path / "o" / "u12.png")
    assert meta["input"] == "u12.tif" and "12-bit data" in meta["conversions"][0]
    assert "12-bit data" in out and io.read_label_metadata(tmp_path / "o" / "u8.png")["conversions"] == []


def test_api_gives_the_8_bit_labels_for_16_bit_and_signed_rgb():
    from napari_vptv.api import segment_image

    rgb = _rgb()
    ref = segment_image(rgb).labels
    for name in ("uint16 x257", "12 bits in uint16", "int8 offset", "int16 x128"):
        res = segment_image(ENCODINGS[name](rgb))
        np.testing.assert_array_equal(res.labels, ref, err_msg=name)
        assert res.info["conversions"], name


def test_normalise_intensity_is_exact_for_every_encoding_and_says_how():
    rgb = _rgb()
    for name, enc in ENCODINGS.items():
        out, note = io.normalise_intensity(enc(rgb))
        assert out.dtype == np.uint8 and note, name
        np.testing.assert_array_equal(out, rgb, err_msg=name)
    noisy = (rgb.astype(np.uint16) << 4) + 7  # true 12-bit data: scaled, not shifted
    out, note = io.normalise_intensity(noisy)
    assert out.dtype == np.float32 and "1/4095" in note and np.abs(out * 255 - rgb).max() < 1
    out, note = io.normalise_intensity(rgb)
    assert out is rgb and note is None


def test_tiff_pages_written_one_by_one_are_all_read_or_refused(tmp_path, capsys):
    rgb = _rgb()
    for _ in range(3):
        tifffile.imwrite(tmp_path / "pages.tif", rgb, photometric="rgb", append=True)
    assert len(tifffile.TiffFile(tmp_path / "pages.tif").series) == 3
    notes = []
    assert io.read_image(tmp_path / "pages.tif", notes=notes).shape == (3,) + rgb.shape and "3 TIFF series" in notes[0]
    rc = main(["segment", str(tmp_path / "pages.tif"), "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    labels = tifffile.imread(tmp_path / "o" / "pages.tif")
    assert labels.shape == (3,) + rgb.shape[:2] and np.array_equal(labels[0], labels[2]) and labels.max() == 2
    tifffile.imwrite(tmp_path / "mixed.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "mixed.tif", rgb[:100], photometric="rgb", append=True)
    with pytest.raises(ValueError, match="mixed.tif.*2 images of different shapes"):
        io.read_image(tmp_path / "mixed.tif")
    rc = main(["segment", str(tmp_path / "mixed.tif"), "--out", str(tmp_path / "o"), "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 1 and "different shapes" in cap.err and not (tmp_path / "o" / "mixed.png").exists()


def _close(a, b, tol):
    return np.abs(a.astype(float) - b.astype(float)).mean() < tol


def test_cmyk_jpeg_is_read_as_rgb(tmp_path):
    from PIL import Image

    rgb = _rgb()
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    notes = []
    img = io.read_image(tmp_path / "c.jpg", notes=notes)
    assert img.shape == rgb.shape and _close(img, rgb, 4) and notes == ["CMYK image converted to RGB"]


def test_cmyk_tiff_is_read_as_rgb(tmp_path):
    from PIL import Image

    rgb = _rgb()
    cmyk = np.asarray(Image.fromarray(rgb).convert("CMYK"))
    tifffile.imwrite(tmp_path / "c.tif", cmyk, photometric="separated")
    img = io.read_image(tmp_path / "c.tif")
    assert img.shape == rgb.shape and _close(img, rgb, 2)


@pytest.mark.parametrize("suffix", [".gif", ".png"])
def test_palette_images_are_read_as_rgb(tmp_path, suffix):
    from PIL import Image

    rgb = _rgb()
    Image.fromarray(rgb).quantize(256).save(tmp_path / f"p{suffix}")  # adaptive palette
    notes = []
    img = io.read_image(tmp_path / f"p{suffix}", notes=notes)
    assert img.shape == rgb.shape and _close(img, rgb, 4) and notes == ["palette image converted to RGB"]


def test_palette_tiff_is_read_as_rgb(tmp_path):
    rgb = _rgb()
    idx = (rgb[..., 0] // 64).astype(np.uint8)  # 4 colours
    lut = np.zeros((3, 256), np.uint16)
    lut[:, :4] = np.array([[0, 0, 0], [200, 30, 30], [30, 200, 30], [255, 255, 255]]).T * 257
    tifffile.imwrite(tmp_path / "p.tif", idx, photometric="palette", colormap=lut)
    img = io.read_image(tmp_path / "p.tif")
    assert img.shape == rgb.shape and np.array_equal(img[idx == 1][0], [200, 30, 30])


def test_an_animated_gif_is_refused_clearly(tmp_path):
    frames = np.stack([_grey_u8(seed=s) for s in range(3)])
    iio.imwrite(tmp_path / "a.gif", frames)
    with pytest.raises(ValueError, match="a.gif.* 3 frames"):
        io.read_image(tmp_path / "a.gif")


def test_min_is_white_and_one_bit_images_read_black_as_zero(tmp_path):
    grey = _grey_u8()
    tifffile.imwrite(tmp_path / "w.tif", 255 - grey, photometric="miniswhite")
    np.testing.assert_array_equal(io.read_image(tmp_path / "w.tif"), grey)
    from PIL import Image

    Image.fromarray(grey > 128).save(tmp_path / "b.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "b.png"), (grey > 128) * 255)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.sampled_from(sorted(ENCODINGS)), st.booleans(), st.integers(0, 2**16))
def test_any_dtype_or_bit_depth_of_an_image_gives_its_8_bit_labels(encoding, colour, seed):
    from napari_vptv.api import segment_image

    rng = np.random.default_rng(seed)
    img = _grey_u8(24, seed)
    img = np.stack([img, np.roll(img, 3, 0), 255 - img], -1) if colour else img
    img = np.clip(img.astype(int) * rng.uniform(0.3, 1.0) + rng.integers(0, 60), 0, 255).astype(np.uint8)
    # the WBC colour model for RGB (absolute colours), three classes for grey
    kind = dict(preset="wbc", volume_mode="none") if colour else dict(preset="none", n_classes=3)
    opts = SegmentOptions(max_num_iter=40, seed=seed, **kind)
    axis = -1 if colour else None
    ref = segment_image(img, opts, channel_axis=axis).labels
    got = segment_image(ENCODINGS[encoding](img), opts, channel_axis=axis).labels
    np.testing.assert_array_equal(got, ref)


# --------------------------------------------------------------------------- #
# one mask reader
# --------------------------------------------------------------------------- #
def test_float_masks_0_half_1_are_read_as_the_three_classes(tmp_path, capsys):
    images, masks = _eval_folders(tmp_path)
    truth = io.read_mask(masks / "a.png", n_classes=3)
    (masks / "a.png").unlink()
    tifffile.imwrite(masks / "a.tif", np.array([0.0, 0.5, 1.0], np.float32)[truth])
    notes = []
    np.testing.assert_array_equal(io.read_mask(masks / "a.tif", n_classes=3, notes=notes), truth)
    assert "0.5 = 128" in notes[0]
    np.testing.assert_array_equal(io.mask_to_labels(np.array([0.0, 0.5, 1.0])[truth], 3), truth)
    tifffile.imwrite(masks / "a.tif", np.array([0.0, 0.3, 0.9], np.float32)[truth])
    rc = main(["evaluate", "--images", str(images), "--masks", str(masks)])
    err = capsys.readouterr().err
    assert rc == 2 and _one_line(err) and "a.tif" in err and "0 / 0.5 / 1" in err


def test_colour_masks_are_refused_not_read_from_one_channel(tmp_path):
    _, truth = load_sample(sample_ids()[0])
    colour = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8)[truth]
    iio.imwrite(tmp_path / "c.png", colour)
    for read in (lambda: io.read_mask(tmp_path / "c.png", n_classes=3), lambda: io.mask_to_labels(colour, 3)):
        with pytest.raises(ValueError, match="colour image with differing channels"):
            read()
    grey_rgb = np.repeat(np.array([0, 128, 255], np.uint8)[truth][..., None], 3, -1)
    np.testing.assert_array_equal(io.mask_to_labels(grey_rgb, 3), truth)


def test_palette_masks_give_their_indices_or_grey_values(tmp_path):
    from PIL import Image

    _, truth = load_sample(sample_ids()[0])
    im = Image.fromarray(truth.astype(np.uint8), mode="L").convert("P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)  # colour palette: indices are labels
    im.save(tmp_path / "p.png")
    np.testing.assert_array_equal(io.read_mask(tmp_path / "p.png", n_classes=3), truth)
    im.putpalette([0, 0, 0, 128, 128, 128, 255, 255, 255] + [0] * 759)  # grey palette: WBC grey
    im.save(tmp_path / "g.png")
    np.testing.assert_array_equal(io.read_mask(tmp_path / "g.png", n_classes=3), truth)


def test_correct_refuses_two_masks_for_one_image(tmp_path, capsys):
    iio.imwrite(tmp_path / "003.png", _grey_u8())
    (tmp_path / "m").mkdir()
    lab = (_grey_u8() > 100).astype(np.uint8)
    iio.imwrite(tmp_path / "m" / "003.png", lab)
    tifffile.imwrite(tmp_path / "m" / "003.tif", lab)
    rc = main(["correct", str(tmp_path / "003.png"), "--masks", str(tmp_path / "m"), "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert rc == 1 and "two masks" in out and "003.png" in out and "003.tif" in out
    assert not (tmp_path / "o" / "003.png").exists()
