"""Tests of cca_codec.image.io (input policy, output) and cca_codec.base.fileio (atomic writes)."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image, ImageCms

from cca_codec.base import fileio
from cca_codec.base.errors import InputError
from cca_codec.image.io import DecodedImage, encode_png, load_image, save_image

RNG = np.random.default_rng(0)


def _random_rgb(height: int = 6, width: int = 5) -> np.ndarray:
    return RNG.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _save(img: Image.Image, path, **options) -> str:
    img.save(path, **options)
    return str(path)


def _decoded(source) -> DecodedImage:
    return DecodedImage(
        rgb=source.rgb,
        color_mode=source.color_mode,
        alpha=source.alpha,
        icc_profile=source.icc_profile,
        exif=source.exif,
    )


def test_rgb_png_round_trip_is_exact(tmp_path):
    pixels = _random_rgb()
    src = load_image(_save(Image.fromarray(pixels), tmp_path / "in.png"))
    assert (src.color_mode, src.bit_depth, src.alpha, src.notes) == ("rgb", 8, None, [])
    assert (src.width, src.height) == (5, 6)
    assert src.rgb.dtype == np.uint8 and src.rgb.flags.c_contiguous
    np.testing.assert_array_equal(src.rgb, pixels)
    out = tmp_path / "out.png"
    save_image(_decoded(src), str(out))
    with Image.open(out) as back:
        assert back.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(back), pixels)


def test_bytes_input_is_read_like_a_file(tmp_path):
    pixels = _random_rgb()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    np.testing.assert_array_equal(load_image(buffer.getvalue()).rgb, pixels)


def test_grayscale_stays_gray(tmp_path):
    gray = RNG.integers(0, 256, size=(4, 7), dtype=np.uint8)
    src = load_image(_save(Image.fromarray(gray), tmp_path / "g.png"))
    assert (src.color_mode, src.bit_depth, src.notes) == ("gray", 8, [])
    assert src.rgb.shape == (4, 7, 3)
    for channel in range(3):
        np.testing.assert_array_equal(src.rgb[..., channel], gray)
    back = Image.open(io.BytesIO(encode_png(_decoded(src))))
    assert back.mode == "L"
    np.testing.assert_array_equal(np.asarray(back), gray)


def test_16bit_grayscale_is_scaled_with_rounding(tmp_path):
    values = np.array([[0, 128, 129, 257], [32767, 32896, 65406, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    src = load_image(_save(image, tmp_path / "g16.png"))
    assert (src.color_mode, src.bit_depth) == ("gray", 16)
    assert "16-bit input reduced to 8 bits per channel" in src.notes
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(src.rgb[..., 0], expected)


def test_rgba_with_real_alpha_is_kept(tmp_path):
    rgba = np.dstack([_random_rgb(), np.full((6, 5), 255, np.uint8)])
    rgba[0, 0, 3] = 0
    rgba[2, 3, 3] = 128
    src = load_image(_save(Image.fromarray(rgba), tmp_path / "a.png"))
    assert src.color_mode == "rgb" and src.alpha is not None
    np.testing.assert_array_equal(src.alpha, rgba[..., 3])
    np.testing.assert_array_equal(src.rgb, rgba[..., :3])
    back = Image.open(io.BytesIO(encode_png(_decoded(src))))
    assert back.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(back), rgba)


def test_fully_opaque_alpha_is_dropped(tmp_path):
    rgba = np.dstack([_random_rgb(), np.full((6, 5), 255, np.uint8)])
    src = load_image(_save(Image.fromarray(rgba), tmp_path / "opaque.png"))
    assert src.alpha is None and src.notes == []


def test_palette_with_transparency(tmp_path):
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    image = Image.fromarray(indices, mode="L").convert("P")
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3))
    src = load_image(_save(image, tmp_path / "p.png", transparency=1))
    assert src.color_mode == "rgb"
    assert "palette image coded as RGB" in src.notes
    np.testing.assert_array_equal(src.alpha, np.where(indices == 1, 0, 255))
    np.testing.assert_array_equal(src.rgb[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(src.rgb[0, 2], [0, 0, 255])


def test_grayscale_trns_key_becomes_alpha(tmp_path):
    gray = np.array([[0, 5], [5, 9]], dtype=np.uint8)
    src = load_image(_save(Image.fromarray(gray), tmp_path / "k.png", transparency=5))
    assert src.color_mode == "gray"
    np.testing.assert_array_equal(src.alpha, [[255, 0], [0, 255]])


def test_cmyk_jpeg_is_converted_with_note(tmp_path):
    image = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    src = load_image(_save(image, tmp_path / "c.jpg", quality=95))
    assert src.color_mode == "rgb"
    assert "CMYK converted to RGB" in src.notes
    assert np.abs(src.rgb[4, 4].astype(int) - [255, 0, 0]).max() < 8


@pytest.mark.parametrize("name", ["o.png", "o.tif"])
def test_exif_orientation_is_applied_and_reset(tmp_path, name):
    pixels = _random_rgb(height=4, width=10)
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "ccacodec test camera"
    src = load_image(_save(Image.fromarray(pixels), tmp_path / name, exif=exif))
    assert src.rgb.shape == (10, 4, 3)
    np.testing.assert_array_equal(src.rgb, np.rot90(pixels, k=-1))
    assert "EXIF orientation 6 applied" in src.notes
    stored = Image.Exif()
    stored.load(src.exif)
    assert stored[0x0112] == 1 and stored[0x010F] == "ccacodec test camera"
    back = Image.open(io.BytesIO(encode_png(_decoded(src))))
    assert back.getexif()[0x0112] == 1


def test_animated_gif_codes_first_frame(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (4, 4), colour) for colour in colours]
    path = _save(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    src = load_image(path)
    assert "animated/multi-frame input: only the first of 3 frames is coded" in src.notes
    np.testing.assert_array_equal(src.rgb[0, 0], colours[0])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"hello, this is plain text\n", "is not an image"),
    ],
)
def test_unreadable_input_files(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_image(path)


def test_truncated_png(tmp_path):
    buffer = io.BytesIO()
    noise = RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="PNG")
    with pytest.raises(InputError, match="truncated"):
        load_image(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = _save(Image.fromarray(_random_rgb()), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(InputError, match="decompression bomb"):
        load_image(path)


def test_max_pixels_argument_overrides_pillows_limit(tmp_path):
    path = _save(Image.fromarray(_random_rgb()), tmp_path / "big.png")
    pixels = Image.open(path).width * Image.open(path).height
    with pytest.raises(InputError, match=f"exceeds limit of {pixels - 1} pixels"):
        load_image(path, max_pixels=pixels - 1)
    assert load_image(path, max_pixels=pixels).width > 0
    assert Image.MAX_IMAGE_PIXELS > pixels  # Pillow's own limit is restored


def test_icc_profile_is_carried_into_png(tmp_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = load_image(_save(Image.fromarray(_random_rgb()), tmp_path / "icc.png", icc_profile=icc))
    assert src.icc_profile == icc
    back = Image.open(io.BytesIO(encode_png(_decoded(src))))
    assert back.info["icc_profile"] == icc


def test_save_image_formats(tmp_path):
    pixels = _random_rgb()
    decoded = DecodedImage(rgb=pixels, color_mode="rgb")
    for name in ("x.bmp", "x.ppm", "x.tif", "x.webp"):
        save_image(decoded, str(tmp_path / name))
        with Image.open(tmp_path / name) as back:
            np.testing.assert_array_equal(np.asarray(back.convert("RGB")), pixels)
    with pytest.raises(InputError, match=r"\.png \.bmp \.ppm \.tif \.tiff \.webp"):
        save_image(decoded, str(tmp_path / "x.jpg"))


def test_gray_with_alpha_is_saved_as_la_and_refused_by_ppm(tmp_path):
    gray = RNG.integers(0, 256, size=(3, 4), dtype=np.uint8)
    alpha = np.array([[0, 255, 9, 1]] * 3, dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    decoded = DecodedImage(rgb=rgb, color_mode="gray", alpha=alpha)
    save_image(decoded, str(tmp_path / "la.png"))
    with Image.open(tmp_path / "la.png") as back:
        assert back.mode == "LA"
        np.testing.assert_array_equal(np.asarray(back), np.dstack([gray, alpha]))
    with pytest.raises(InputError, match="cannot store transparency"):
        save_image(decoded, str(tmp_path / "la.ppm"))
    assert not (tmp_path / "la.ppm").exists()


def test_save_image_to_stdout_writes_png(capsysbinary):
    save_image(DecodedImage(rgb=_random_rgb(), color_mode="rgb"), "-")
    assert capsysbinary.readouterr().out.startswith(b"\x89PNG\r\n\x1a\n")


def test_atomic_write_interrupted_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write(tmp_path / "out.png", b"data")
    assert os.listdir(tmp_path) == []


def test_atomic_write_no_overwrite_keeps_existing(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"original")
    with pytest.raises(InputError, match="exists"):
        fileio.atomic_write(target, b"new", overwrite=False)
    assert target.read_bytes() == b"original"
    assert os.listdir(tmp_path) == ["out.png"]
    fileio.atomic_write(tmp_path / "fresh.png", b"new", overwrite=False)
    assert (tmp_path / "fresh.png").read_bytes() == b"new"


def test_atomic_write_missing_directory(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        fileio.atomic_write(tmp_path / "no" / "out.png", b"data")
