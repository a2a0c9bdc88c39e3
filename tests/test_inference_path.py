"""The coding path without CompressAI (frozen entropy models) and the transform precisions."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEST_MODEL_ID, sample_pixels

from cca_codec.base.errors import UsageError
from cca_codec.core.checkpoint import load_model
from cca_codec.core.codec import decode_image, encode_image
from cca_codec.core.precision import resolve_precision
from cca_codec.image.io import SourceImage
from cca_codec.nn.priors import FrozenEntropyModel

REPO = Path(__file__).resolve().parents[1]
CODE_WITHOUT_COMPRESSAI = """
import sys
from cca_codec.core.checkpoint import load_model
from cca_codec.core.codec import decode_image, encode_image
from cca_codec.image.io import SourceImage
import numpy as np
rgb = np.zeros((40, 70, 3), np.uint8)
model = load_model(sys.argv[1])
image = SourceImage(rgb=rgb, color_mode="rgb", bit_depth=8, alpha=None, icc_profile=None, exif=None, notes=[])
for mode in ("grouped", "checkerboard"):
    assert decode_image(encode_image(image, model, context=mode, device="cpu"), model, device="cpu").rgb.shape == rgb.shape
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("compressai", "scipy", "torch_geometric"))
assert not loaded, loaded
"""


def source(rgb: np.ndarray) -> SourceImage:
    return SourceImage(rgb=rgb, color_mode="rgb", bit_depth=8, alpha=None, icc_profile=None, exif=None, notes=[])


def test_encoding_and_decoding_import_no_compressai(test_models_root):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    done = subprocess.run(
        [sys.executable, "-c", CODE_WITHOUT_COMPRESSAI, str(test_models_root / TEST_MODEL_ID)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr


def test_frozen_and_trainable_networks_hold_the_same_state_and_code_alike(test_models_root):
    frozen = load_model(test_models_root / TEST_MODEL_ID)
    trainable = load_model(test_models_root / TEST_MODEL_ID, trainable=True)
    assert isinstance(frozen.net.entropy_bottleneck, FrozenEntropyModel) and not frozen.net.trainable
    assert not isinstance(trainable.net.entropy_bottleneck, FrozenEntropyModel)
    a, b = frozen.net.state_dict(), trainable.net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    image = source(sample_pixels(64, 96))
    assert encode_image(image, frozen, device="cpu") == encode_image(image, trainable, device="cpu")


def test_a_frozen_entropy_model_needs_its_tables(test_models_root):
    net = load_model(test_models_root / TEST_MODEL_ID).net
    state = {k: v for k, v in net.state_dict().items() if k != "entropy_bottleneck._quantized_cdf"}
    with pytest.raises(RuntimeError, match="entropy_bottleneck._quantized_cdf"):
        net.load_state_dict(state)


def test_bf16_transforms_stay_close_to_the_exact_ones(test_models_root):
    if resolve_precision("auto", torch.device("cpu")) != "bf16":
        pytest.skip("this CPU has no native bf16")
    model = load_model(test_models_root / TEST_MODEL_ID)
    image = source(sample_pixels(128, 192))
    exact = encode_image(image, model, quality=4, device="cpu", precision="fp32")
    fast = encode_image(image, model, quality=4, device="cpu", precision="bf16")
    assert abs(len(fast) - len(exact)) <= 0.02 * len(exact)
    a = decode_image(exact, model, device="cpu", precision="fp32").rgb.astype(np.int16)
    b = decode_image(exact, model, device="cpu", precision="bf16").rgb.astype(np.int16)
    assert np.abs(a - b).max() <= 3 and np.abs(a - b).mean() < 0.5


def test_precision_names_are_checked():
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(UsageError, match="unknown precision"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(UsageError, match="native bf16"):
        resolve_precision("bf16", torch.device("meta"))
    with pytest.raises(UsageError, match="oneDNN"):
        resolve_precision("fp32-fast", torch.device("meta"))
    if torch.backends.mkldnn.is_available():
        assert resolve_precision("fp32-fast", torch.device("cpu")) == "fp32-fast"
        assert resolve_precision("auto", torch.device("cpu")) in ("bf16", "fp32-fast")
