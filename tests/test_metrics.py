"""SSIMULACRA2 (cca_codec.image.metrics.ssimulacra2) on generated images; against libjxl's tool when installed."""
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cca_codec.image import metrics
from cca_codec.image.metrics import ssimulacra2

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "seeding.png"
REGRESSION_SCORE = 51.921187


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8: smooth gradients, a sharp-edged disc, fine stripes and noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([
        40 + 150 * xx / width,
        60 + 120 * yy / height,
        128 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0),
    ], axis=-1)
    disc = (yy - height / 2) ** 2 + (xx - width / 3) ** 2 < (min(height, width) / 4) ** 2
    base[disc] = [220, 40, 30]
    base[:, width * 2 // 3:] += 30 * (np.sin(xx[:, width * 2 // 3:] * 1.3) > 0)[..., None]
    noise = np.random.default_rng(seed).normal(0.0, 6.0, base.shape)
    return np.clip(np.rint(base + noise), 0, 255).astype(np.uint8)


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def test_identical_images_score_100():
    image = photo_like(96, 128)
    assert ssimulacra2(image, image) == 100.0


def test_score_falls_as_jpeg_quality_falls():
    """On a crop of the shipped photograph: about 90 at JPEG quality 95 down to below 0 at 5."""
    with Image.open(SAMPLE) as img:
        image = np.asarray(img.convert("RGB"))[100:292, 200:456]
    scores = [ssimulacra2(image, jpeg(image, q)) for q in (95, 80, 60, 40, 20, 5)]
    assert all(a > b for a, b in zip(scores, scores[1:])), scores
    assert 85 < scores[0] < 95 and scores[-1] < 0


def test_regression_value_on_a_generated_pair():
    """Pins this implementation (float32 maps) on a fixed pair: the value only moves when the algorithm does.
    The implementation was checked against the Rust port's reference pair (docs/RESULTS.md)."""
    image = photo_like(64, 80, seed=3)
    distorted = np.clip(image.astype(np.int16) + np.random.default_rng(4).integers(-12, 13, image.shape), 0, 255)
    assert ssimulacra2(image, distorted.astype(np.uint8)) == pytest.approx(REGRESSION_SCORE, abs=1e-3)


def test_blur_taps_are_a_normalised_symmetric_kernel():
    taps = metrics._BLUR_TAPS
    assert len(taps) == 9 and taps.sum() == pytest.approx(1.0)
    assert np.allclose(taps, taps[::-1]) and taps.argmax() == 4


@pytest.mark.parametrize("height, width", [(8, 8), (9, 300), (15, 16), (33, 17)])
def test_small_and_odd_sizes_work(height, width):
    image = photo_like(height, width)
    assert ssimulacra2(image, image) == 100.0
    assert np.isfinite(ssimulacra2(image, jpeg(image, 30)))


@pytest.mark.parametrize(
    "reference, distorted, message",
    [
        (np.zeros((7, 40, 3), np.uint8), np.zeros((7, 40, 3), np.uint8), "at least 8x8"),
        (np.zeros((16, 16, 3), np.uint8), np.zeros((16, 17, 3), np.uint8), "shapes differ"),
        (np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8), "(H, W, 3) uint8"),
        (np.zeros((16, 16, 3), np.float32), np.zeros((16, 16, 3), np.float32), "(H, W, 3) uint8"),
    ],
)
def test_invalid_input_raises(reference, distorted, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ssimulacra2(reference, distorted)


def test_not_symmetric():
    image = photo_like(64, 64)
    coded = jpeg(image, 20)
    assert ssimulacra2(image, coded) != ssimulacra2(coded, image)


@pytest.mark.skipif(shutil.which("ssimulacra2") is None, reason="libjxl's ssimulacra2 tool is not installed")
def test_matches_libjxl_tool(tmp_path: Path):
    image = photo_like(200, 260, seed=5)
    for quality in (90, 50, 10):
        coded = jpeg(image, quality)
        Image.fromarray(image).save(tmp_path / "ref.png")
        Image.fromarray(coded).save(tmp_path / "dist.png")
        out = subprocess.run(["ssimulacra2", str(tmp_path / "ref.png"), str(tmp_path / "dist.png")], capture_output=True, text=True, check=True)
        assert ssimulacra2(image, coded) == pytest.approx(float(out.stdout.split()[-1]), abs=0.3)


def test_metrics_cli_prints_ssimulacra2(tmp_path: Path, capsys):
    image = photo_like(40, 48)
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(jpeg(image, 50)).save(tmp_path / "b.png")
    metrics.main([str(tmp_path / "a.png"), str(tmp_path / "b.png")])
    assert "SSIMULACRA2 " in capsys.readouterr().out


def test_fidelity_leaves_out_what_the_size_does_not_define():
    tiny = photo_like(7, 40, seed=5)
    measured = metrics.fidelity(tiny, tiny)
    assert measured.psnr == float("inf") and measured.ms_ssim is None and measured.ssimulacra2 is None
    small = metrics.fidelity(photo_like(8, 40, seed=5), photo_like(8, 40, seed=6))
    assert small.ms_ssim is None and small.ssimulacra2 < 100.0
    big, coded = photo_like(170, 180, seed=1), jpeg(photo_like(170, 180, seed=1), 30)
    measured = metrics.fidelity(big, coded)
    assert measured.psnr == metrics.psnr(big, coded) and measured.ssimulacra2 == ssimulacra2(big, coded)
    assert 0 < measured.ms_ssim < 1
