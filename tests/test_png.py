"""Tests of cca_codec.image.png: the PNG writer for decoded images (Average filter, parallel bands)."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from cca_codec.image import png
from cca_codec.image.png import adler32_combine, average_filtered, png_bytes

RNG = np.random.default_rng(7)


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, checking each CRC."""
    assert data[:8] == png.SIGNATURE
    out, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        out.append((kind, body))
        at += 12 + length
    return out


def _unfilter_average(filtered: bytes, height: int, row_bytes: int, bpp: int) -> np.ndarray:
    """A plain reading of PNG's Average filter, byte by byte (the specification's loop)."""
    rows = np.frombuffer(filtered, np.uint8).reshape(height, 1 + row_bytes)
    out = np.zeros((height, row_bytes), np.int64)
    for r in range(height):
        assert rows[r, 0] == png.AVERAGE_FILTER
        for x in range(row_bytes):
            left = out[r, x - bpp] if x >= bpp else 0
            up = out[r - 1, x] if r else 0
            out[r, x] = (int(rows[r, 1 + x]) + (left + up) // 2) % 256
    return out.astype(np.uint8)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9, 3), (6, 1, 4), (5, 7, 2), (13, 11), (9, 4, 3)])
def test_average_filter_matches_the_specification(shape):
    pixels = RNG.integers(0, 256, size=shape, dtype=np.uint8)
    bpp = 1 if len(shape) == 2 else shape[2]
    rows = pixels.reshape(shape[0], -1)
    filtered = np.concatenate([average_filtered(rows, bpp, a, b) for a, b in ((0, shape[0] // 2), (shape[0] // 2, shape[0]))])
    np.testing.assert_array_equal(_unfilter_average(filtered.tobytes(), shape[0], rows.shape[1], bpp), rows)


@pytest.mark.parametrize("channels,mode", [(1, "L"), (2, "LA"), (3, "RGB"), (4, "RGBA")])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_pillow_reads_back_every_mode_and_band_count(monkeypatch, channels, mode, threads):
    monkeypatch.setattr(png, "MIN_BAND_BYTES", 64)  # several bands even for a small image
    pixels = RNG.integers(0, 256, size=(37, 29, channels), dtype=np.uint8)
    data = png_bytes(pixels, threads=threads)
    idats = [body for kind, body in _chunks(data) if kind == b"IDAT"]
    assert len(idats) == threads + 1  # one per band, then the Adler-32
    zlib.decompress(b"".join(idats))  # checks the combined Adler-32
    with Image.open(io.BytesIO(data)) as back:
        assert back.mode == mode
        np.testing.assert_array_equal(np.asarray(back).reshape(pixels.shape), pixels)


def test_two_dimensional_input_is_gray():
    gray = RNG.integers(0, 256, size=(3, 8), dtype=np.uint8)
    with Image.open(io.BytesIO(png_bytes(gray))) as back:
        assert back.mode == "L"
        np.testing.assert_array_equal(np.asarray(back), gray)


def test_icc_profile_and_exif_are_embedded():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "ccacodec test camera"
    pixels = RNG.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    for exif_bytes in (exif.tobytes(), exif.tobytes()[6:]):  # with and without the Exif\0\0 header
        with Image.open(io.BytesIO(png_bytes(pixels, icc_profile=icc, exif=exif_bytes))) as back:
            assert back.info["icc_profile"] == icc
            assert back.getexif()[0x010F] == "ccacodec test camera"
            np.testing.assert_array_equal(np.asarray(back), pixels)


def test_adler32_combine_agrees_with_zlib():
    data = RNG.integers(0, 256, size=300_000, dtype=np.uint8).tobytes()
    for cut in (0, 1, 65521, 65522, 200_003, len(data)):
        first, second = data[:cut], data[cut:]
        assert adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second)) == zlib.adler32(data)


def test_bad_pixels_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(np.zeros((2, 2, 3), np.uint16))
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(ValueError, match="at least one pixel"):
        png_bytes(np.zeros((0, 4, 3), np.uint8))


def test_a_failing_band_raises_in_the_caller(monkeypatch):
    monkeypatch.setattr(png, "MIN_BAND_BYTES", 64)

    def broken(rows, bpp, start, stop):
        if start:
            raise MemoryError("band")
        return average_filtered(rows, bpp, start, stop)

    monkeypatch.setattr(png, "average_filtered", broken)
    with pytest.raises(MemoryError, match="band"):
        png_bytes(RNG.integers(0, 256, size=(40, 30, 3), dtype=np.uint8), threads=2)
