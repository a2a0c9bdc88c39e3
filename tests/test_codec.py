"""The codec through the Python API: round trips, determinism, desync detection, model checks."""
import struct
import zlib

import numpy as np
import pytest
import torch
from conftest import lively_model, sample_pixels

from cca_codec.base.errors import FormatError, ModelError, UsageError
from cca_codec.core.checkpoint import in_memory_model, load_model, save_model_dir
from cca_codec.core.codec import decode_image, encode_image
from cca_codec.format.container import read_container
from cca_codec.image.io import SourceImage

MODES = ["grouped", "checkerboard"]
photo = sample_pixels


def source(rgb: np.ndarray, **kw) -> SourceImage:
    fields = dict(color_mode="rgb", bit_depth=8, alpha=None, icc_profile=None, exif=None, notes=[])
    fields.update(kw)
    return SourceImage(rgb=rgb, **fields)


@pytest.fixture(scope="module")
def model():
    return lively_model("test-tiny")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / max(mse, 1e-12))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [(1, 1), (17, 33), (512, 768)])
def test_round_trip_is_exact_and_repeatable(model, mode, size):
    rgb = photo(*size)
    data = encode_image(source(rgb), model, quality=3, context=mode, device="cpu")
    assert encode_image(source(rgb), model, quality=3, context=mode, device="cpu") == data
    out = decode_image(data, model, device="cpu")
    again = decode_image(data, model, device="cpu")
    assert out.rgb.shape == rgb.shape and out.rgb.dtype == np.uint8
    assert np.array_equal(out.rgb, again.rgb)
    header = read_container(data).header
    assert (header.width, header.height, header.context_mode) == (size[1], size[0], mode)
    assert header.model_id == "test-tiny" and header.weights_sha256 == model.weights_sha256


def test_stream_carries_real_information(model):
    """Large gains make y span many symbols: the stream grows with quality and image size."""
    small = encode_image(source(photo(64, 64)), model, quality=3, context="grouped", device="cpu")
    large = encode_image(source(photo(256, 256)), model, quality=3, context="grouped", device="cpu")
    assert len(large) > 4 * len(small) > 0
    tile = read_container(large).tiles[0]
    assert len(tile.stream) > 1000


def test_fractional_quality_is_recorded(model):
    data = encode_image(source(photo(64, 64)), model, quality=2.5, context="grouped", device="cpu")
    header = read_container(data).header
    assert header.quality == 2.5
    assert model.lam(2) < header.lam < model.lam(3) or model.lam(3) < header.lam < model.lam(2)
    decode_image(data, model, device="cpu")


@pytest.mark.parametrize("quality", [0, 0.99, 8.01, 99])
def test_quality_out_of_range_is_a_usage_error(model, quality):
    with pytest.raises(UsageError):
        encode_image(source(photo(8, 8)), model, quality=quality, device="cpu")


def test_gray_and_alpha_survive(model):
    gray = photo(40, 50)[..., :1].repeat(3, axis=2)
    out = decode_image(encode_image(source(gray, color_mode="gray"), model, device="cpu"), model, device="cpu")
    assert out.color_mode == "gray" and out.to_pil().mode == "L"
    alpha = (np.arange(40 * 50) % 256).astype(np.uint8).reshape(40, 50)
    out = decode_image(encode_image(source(photo(40, 50), alpha=alpha), model, device="cpu"), model, device="cpu")
    assert np.array_equal(out.alpha, alpha)


def _rewrite_stream(data: bytes, mutate) -> bytes:
    """Apply `mutate` to the CDAT payload's stream and fix the chunk CRC, so only the coder sees it."""
    pos = 8
    while pos < len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        if ctype == b"CDAT":
            payload = bytearray(data[pos + 8 : pos + 8 + length])
            payload[8:] = mutate(bytes(payload[8:]))
            chunk = struct.pack(">I", len(payload)) + ctype + bytes(payload)
            chunk += struct.pack(">I", zlib.crc32(ctype + bytes(payload)))
            return data[:pos] + chunk + data[pos + 12 + length :]
        pos += 12 + length
    raise AssertionError("no CDAT chunk")


@pytest.mark.parametrize("mode", MODES)
def test_a_damaged_stream_is_an_error_never_a_wrong_picture(model, mode):
    data = encode_image(source(photo(128, 128)), model, quality=4, context=mode, device="cpu")
    n = len(read_container(data).tiles[0].stream)
    failures = 0
    for k in range(0, n, max(1, n // 24)):
        def flip(stream, k=k):
            b = bytearray(stream)
            b[k] ^= 0x10
            return bytes(b)

        with pytest.raises(FormatError):
            decode_image(_rewrite_stream(data, flip), model, device="cpu")
        failures += 1
    assert failures >= 10
    with pytest.raises(FormatError):
        decode_image(_rewrite_stream(data, lambda s: s[: len(s) // 2]), model, device="cpu")


def test_other_weights_are_refused(model):
    data = encode_image(source(photo(32, 32)), model, device="cpu")
    other = in_memory_model("cca-tiny", model_id="test-tiny", seed=6)
    with pytest.raises(ModelError, match="weights"):
        decode_image(data, other, device="cpu")


def test_saved_model_directory_decodes_the_same(model, tmp_path):
    directory = save_model_dir(model, tmp_path / "test-tiny", dtype=torch.float32)
    loaded = load_model(directory)
    assert loaded.weights_sha256 == model.weights_sha256
    data = encode_image(source(photo(64, 96)), model, quality=5, context="checkerboard", device="cpu")
    assert np.array_equal(decode_image(data, loaded, device="cpu").rgb, decode_image(data, model, device="cpu").rgb)
    (directory / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="sha256"):
        load_model(directory)


@pytest.mark.parametrize("mode", MODES)
def test_decoded_image_matches_the_training_forward_pass(model, mode):
    """Coding and the training forward share the entropy-parameter modules: in eval mode (rounding
    instead of noise) the forward's reconstruction is the decoded image, up to float rounding."""
    rgb = photo(64, 128)
    out = decode_image(encode_image(source(rgb), model, quality=3, context=mode, device="cpu"), model, device="cpu")
    net = model.net
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    try:
        net.float().eval()
        with torch.no_grad():
            x_hat = net(x, torch.tensor([3.0]), checkerboard=mode == "checkerboard")["x_hat"]
    finally:
        net.load_state_dict(saved)
        model._coding = None
    ref = (x_hat[0].clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()
    diff = np.abs(ref - out.rgb.astype(np.float64))
    assert np.mean(diff > 1) < 1e-3, f"max diff {diff.max()}"
    assert psnr(ref.astype(np.uint8), out.rgb) > 45
