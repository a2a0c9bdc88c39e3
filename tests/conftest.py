"""Shared fixtures: a tiny test model on the model search path, and small test images.

There are no trained weights in the repository, so the session builds a randomly
initialised ``cca-tiny`` network once, saves it as the model directory ``test-tiny``, and
tests that need it put that directory's parent on ``CCACODEC_MODELS``.

Test images are crops of ``/work/shared/data/kodak/kodim23.png`` when it exists, otherwise
a deterministic synthetic image (smooth gradients plus texture and noise), so the tests
also run where the shared data is absent.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TEST_MODEL_ID = "test-tiny"
KODAK_IMAGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak" / "kodim23.png"
_CROP_ORIGIN = (180, 300)  # (top, left) of the crops: a detailed part of kodim23
_SYNTHETIC_SIZE = (256, 256)

ImageFactory = Callable[..., Path]
ImageWriter = Callable[..., Path]


@lru_cache(maxsize=1)
def _source_pixels() -> np.ndarray:
    """(H, W, 3) uint8 pixels that test images are cropped from."""
    if KODAK_IMAGE.is_file():
        with Image.open(KODAK_IMAGE) as img:
            rgb = np.asarray(img.convert("RGB"))
        top, left = _CROP_ORIGIN
        return np.ascontiguousarray(rgb[top:, left:])
    height, width = _SYNTHETIC_SIZE
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    noise = np.random.default_rng(0).normal(0.0, 6.0, size=(height, width, 3))
    channels = np.stack(
        [
            255.0 * xx / (width - 1),
            255.0 * yy / (height - 1),
            127.5 + 80.0 * np.sin(xx / 9.0) * np.cos(yy / 13.0),
        ],
        axis=-1,
    )
    return np.clip(np.rint(channels + noise), 0, 255).astype(np.uint8)


def sample_pixels(height: int, width: int) -> np.ndarray:
    """A (height, width, 3) uint8 test image of any size (the source, mirrored as needed)."""
    src = _source_pixels()
    reps = (-(-height // src.shape[0]), -(-width // src.shape[1]))
    rows = [np.concatenate([src if (i + j) % 2 == 0 else src[:, ::-1] for j in range(reps[1])], 1) for i in range(reps[0])]
    return np.ascontiguousarray(np.concatenate(rows, 0)[:height, :width])


def lively_model(model_id: str = "test-lively", seed: int = 5):
    """A random cca-tiny model whose large, per-quality y gains spread the latents over many symbols, so
    coding tests exercise real tables and escapes (a plain random model codes mostly zeros)."""
    import hashlib

    import torch

    from cca_codec.core.checkpoint import in_memory_model, serialize_weights

    model = in_memory_model("cca-tiny", model_id=model_id, seed=seed)
    with torch.no_grad():  # gains e^2 .. e^4.8 by quality: more symbols at higher qualities
        steps = torch.linspace(2.0, 4.8, model.net.gains.num_qualities)[:, None]
        model.net.gains.log_y.copy_(steps.expand_as(model.net.gains.log_y))
        model.net.gains.log_y_inv.copy_(-steps.expand_as(model.net.gains.log_y_inv))
    model.weights_sha256 = hashlib.sha256(serialize_weights(model.net)).digest()
    return model


@pytest.fixture(scope="session")
def test_models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the model directory ``test-tiny`` (float32 weights), built once."""
    import torch

    from cca_codec.core.checkpoint import in_memory_model, save_model_dir

    root = tmp_path_factory.mktemp("models")
    model = in_memory_model("cca-tiny", model_id=TEST_MODEL_ID)
    save_model_dir(model, root / TEST_MODEL_ID, dtype=torch.float32)
    return root


@pytest.fixture
def models_env(test_models_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the test models on ``CCACODEC_MODELS`` (for this test and its subprocesses)."""
    monkeypatch.setenv("CCACODEC_MODELS", str(test_models_root))
    return test_models_root


@pytest.fixture(scope="module")
def one_torch_thread():
    """In-process coding runs share one torch: one thread keeps them fast on a busy 2-core machine
    (use as `pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_photos(directory: Path, count: int, size_range: tuple[int, int], seed: int = 0, scale: float = 50.0) -> Path:
    """`count` generated 'photos' (smooth colour fields with texture and noise, each side drawn from
    `size_range`) as PNGs in `directory`, for building training packs."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = rng.integers(*size_range), rng.integers(*size_range)
        yy, xx = np.mgrid[0:h, 0:w] / scale
        img = np.stack([np.sin(xx + i), np.cos(yy * 1.3 - i), np.sin(xx * yy / 4)], -1)
        img = (img * 90 + 128 + rng.normal(0, 6, img.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(directory / f"photo_{i}.png")
    return directory


def write_image(directory: Path, height: int, width: int, mode: str = "RGB", name: str | None = None) -> Path:
    """Write a new test PNG into ``directory`` and return its path.

    ``mode`` is ``"RGB"``, ``"L"`` (grayscale) or ``"RGBA"`` (with a transparency pattern
    that has fully transparent, partly transparent and opaque pixels).
    """
    rgb = sample_pixels(height, width)
    img = Image.fromarray(rgb)
    if mode == "L":
        img = img.convert("L")
    elif mode == "RGBA":
        yy, xx = np.mgrid[0:height, 0:width]
        alpha = ((xx * 37 + yy * 11) % 256).astype(np.uint8)
        alpha[: height // 2, : width // 2] = 0
        img = Image.fromarray(np.dstack([rgb, alpha]))
    elif mode != "RGB":
        raise ValueError(f"unsupported test image mode {mode!r}")
    path = directory / (name or f"img_{height}x{width}_{mode}.png")
    img.save(path)
    return path


@pytest.fixture(scope="session")
def image_writer() -> ImageWriter:
    """:func:`write_image`, for fixtures that are not function-scoped."""
    return write_image


@pytest.fixture
def make_image(tmp_path: Path) -> ImageFactory:
    """``make_image(height, width, mode="RGB", name=None) -> path`` of a new PNG in tmp_path
    (see :func:`write_image`)."""

    def make(height: int, width: int, mode: str = "RGB", name: str | None = None) -> Path:
        return write_image(tmp_path, height, width, mode, name)

    return make
