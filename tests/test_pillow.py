"""The Pillow plugin (cca_codec.pillow), through Pillow's own API: Image.open, load, save.

The command line is the reference: a file Pillow saves must be the file `ccacodec encode` writes
for the same input and options, and what Pillow decodes must be what `ccacodec decode` writes.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TEST_MODEL_ID, lively_model, sample_pixels
from PIL import Image, ImageCms, UnidentifiedImageError

import cca_codec.pillow  # noqa: F401 - registers the CCA format
from cca_codec.cli import cli

BAD = Path(__file__).resolve().parent / "data" / "bad"
MANIFEST = json.loads((BAD / "manifest.json").read_text())
ORIENTATION = 0x0112
CODING = {"model": TEST_MODEL_ID, "device": "cpu"}

pytestmark = pytest.mark.usefixtures("models_env", "one_torch_thread")



def cli_encode(src: Path, dst: Path, *options: str) -> bytes:
    """The file `ccacodec encode` writes for ``src``."""
    result = CliRunner().invoke(cli, ["encode", str(src), "-o", str(dst), "--model", TEST_MODEL_ID, "--device", "cpu", *options])
    assert result.exit_code == 0, result.stderr
    return dst.read_bytes()


def cli_decode(src: Path, dst: Path) -> Image.Image:
    """The image `ccacodec decode` writes for ``src``, loaded."""
    result = CliRunner().invoke(cli, ["decode", str(src), "-o", str(dst), "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    with Image.open(dst) as img:
        img.load()
        return img


def test_the_format_is_registered():
    assert Image.registered_extensions()[".cca"] == "CCA"
    assert Image.MIME["CCA"] == "image/x-cca"
    assert "CCA" in Image.ID and "CCA" in Image.SAVE


def test_save_open_and_load_agree_with_the_command_line(tmp_path, make_image):
    png = make_image(48, 80)
    with Image.open(png) as img:
        img.save(tmp_path / "pillow.cca", quality=3.5, context="grouped", **CODING)
    reference = cli_encode(png, tmp_path / "cli.cca", "-q", "3.5", "--context", "grouped")
    assert (tmp_path / "pillow.cca").read_bytes() == reference

    with Image.open(tmp_path / "pillow.cca") as img:
        assert (img.format, img.mode, img.size) == ("CCA", "RGB", (80, 48))
        assert img.tile, "decoding waits for load()"
        assert (img.cca_header.quality, img.cca_header.context_mode) == (3.5, "grouped")
        img.load()
        assert not img.tile
        decoded = np.asarray(img)
    assert np.array_equal(decoded, np.asarray(cli_decode(tmp_path / "cli.cca", tmp_path / "cli.png")))


def test_open_from_a_file_object_and_save_to_one(make_image):
    with Image.open(make_image(32, 40)) as img:
        buffer = io.BytesIO()
        img.save(buffer, format="CCA", quality=2, **CODING)
    with Image.open(io.BytesIO(buffer.getvalue()), formats=["CCA"]) as img:
        assert img.size == (40, 32)
        assert np.asarray(img).shape == (32, 40, 3)


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_gray_and_alpha_follow_the_input_policy(tmp_path, make_image, mode):
    png = make_image(40, 56, mode)
    with Image.open(png) as img:
        img.save(tmp_path / "pillow.cca", **CODING)
        original = np.asarray(img)
    assert (tmp_path / "pillow.cca").read_bytes() == cli_encode(png, tmp_path / "cli.cca")
    with Image.open(tmp_path / "pillow.cca") as img:
        assert img.mode == mode
        decoded = np.asarray(img)
    if mode == "RGBA":
        assert np.array_equal(decoded[..., 3], original[..., 3]), "alpha is lossless"


def test_icc_and_exif_are_carried_and_orientation_applied(tmp_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "ccacodec test camera"
    exif[ORIENTATION] = 6  # rotate 90 degrees clockwise to display
    src = tmp_path / "rotated.png"
    Image.fromarray(sample_pixels(24, 40)).save(src, exif=exif, icc_profile=icc)
    with Image.open(src) as img, pytest.warns(UserWarning, match="EXIF orientation 6 applied"):
        img.save(tmp_path / "pillow.cca", **CODING)
        assert img.getexif()[ORIENTATION] == 6, "saving leaves the source image as it was"
    assert (tmp_path / "pillow.cca").read_bytes() == cli_encode(src, tmp_path / "cli.cca")
    with Image.open(tmp_path / "pillow.cca") as img:
        assert img.size == (24, 40)
        assert img.info["icc_profile"] == icc
        assert img.getexif()[0x010F] == "ccacodec test camera"
        assert img.getexif()[ORIENTATION] == 1


def test_what_the_policy_changes_is_a_warning(tmp_path):
    palette = Image.fromarray(sample_pixels(16, 16)).convert("P")
    with pytest.warns(UserWarning, match="palette image coded as RGB"):
        palette.save(tmp_path / "p.cca", **CODING)
    with Image.open(tmp_path / "p.cca") as img:
        assert img.mode == "RGB"


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_damaged_files_raise_pillows_errors_with_one_line(name):
    expected = MANIFEST[name]
    with pytest.raises((OSError, Image.DecompressionBombError)) as caught:
        with Image.open(BAD / name) as img:
            img.load()
    message = str(caught.value)
    assert "\n" not in message
    if caught.type is Image.DecompressionBombError:
        assert name.startswith("bomb_")
    elif name in ("empty.cca", "png_signature.cca", "half_signature.cca"):  # not .cca: Pillow's own message
        assert caught.type is UnidentifiedImageError
    else:
        assert expected["message"] in message, message
        assert caught.type is (OSError if expected["exit_code"] == 5 else UnidentifiedImageError)


def test_a_file_from_other_weights_fails_on_load(tmp_path):
    """Same model id, other weights: the file opens, and load() refuses to decode it."""
    impostor = lively_model(TEST_MODEL_ID)
    Image.fromarray(sample_pixels(16, 24)).save(tmp_path / "x.cca", model=impostor, device="cpu")
    with Image.open(tmp_path / "x.cca") as img:
        assert img.size == (24, 16)
        with pytest.raises(OSError, match="file was encoded with model 'test-tiny' weights"):
            img.load()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"quality": 90}, ValueError, "quality must be between 1 and 8, got 90"),
        ({"context": "spiral"}, ValueError, "unknown context mode 'spiral'"),
        ({"target_bpp": 0.5, "quality": 3}, ValueError, "give a quality or a target, not both"),
        ({"target_bpp": 0.5, "target_size": 900}, ValueError, "give one rate target"),
        ({"target_psnr": -3.0}, ValueError, "target PSNR must be a positive number"),
        ({"model": "no-such-model"}, OSError, "model 'no-such-model' not found"),
    ],
)
def test_bad_save_options_leave_no_file(tmp_path, options, error, message):
    path = tmp_path / "x.cca"
    with pytest.raises(error, match=message):
        Image.fromarray(sample_pixels(16, 16)).save(path, **{**CODING, **options})
    assert not path.exists()


def test_save_with_a_rate_target(tmp_path):
    """target_size picks the quality on real encodings: the file lands within 2 % of it."""
    model = lively_model()
    img = Image.fromarray(sample_pixels(64, 64))
    img.save(tmp_path / "q4.cca", quality=4, model=model, device="cpu")
    goal = round(0.9 * (tmp_path / "q4.cca").stat().st_size)
    img.save(tmp_path / "x.cca", target_size=goal, model=model, device="cpu")
    assert abs((tmp_path / "x.cca").stat().st_size / goal - 1) <= 0.02
