"""Decoding is identical across thread counts and repeated runs, for every quality and both
context modes, on a real image (issue: decode anywhere)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import lively_model, sample_pixels

from cca_codec.core.checkpoint import save_model_dir
from cca_codec.core.codec import decode_image, encode_image
from cca_codec.image.io import SourceImage

MODES = ("grouped", "checkerboard")
DECODE_ALL = """
import hashlib, json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from cca_codec.core.checkpoint import load_model
from cca_codec.core.codec import decode_image
model = load_model(sys.argv[2])
out = {}
for path in sys.argv[3:]:
    data = open(path, "rb").read()
    out[path] = [hashlib.sha256(decode_image(data, model, device="cpu").rgb.tobytes()).hexdigest() for _ in range(2)]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """The lively test model saved as a directory, and one file per (quality, mode)."""
    root = tmp_path_factory.mktemp("determinism")
    model = lively_model("test-determinism")
    model_dir = save_model_dir(model, root / "test-determinism", dtype=torch.float32)
    rgb = sample_pixels(96, 160)
    image = SourceImage(rgb=rgb, color_mode="rgb", bit_depth=8, alpha=None, icc_profile=None, exif=None, notes=[])
    files = {}
    for q in range(1, len(model.qualities) + 1):
        for mode in MODES:
            path = root / f"q{q}_{mode}.cca"
            path.write_bytes(encode_image(image, model, quality=q, context=mode, device="cpu"))
            files[str(path)] = hashlib.sha256(decode_image(path.read_bytes(), model, device="cpu").rgb.tobytes()).hexdigest()
    return model_dir, files


def _decode_in_subprocess(threads: int, model_dir: Path, files: list[str]) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(
        [sys.executable, "-c", DECODE_ALL, str(threads), str(model_dir), *files],
        capture_output=True, text=True, env=env, timeout=600, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_quality_and_mode_decodes_identically_with_1_and_2_threads(coded):
    model_dir, reference = coded
    assert len(reference) == 16 and len(set(reference.values())) > 8  # the files really differ
    for threads in (1, 2):
        hashes = _decode_in_subprocess(threads, model_dir, list(reference))
        for path, (first, second) in hashes.items():
            assert first == second == reference[path], f"{Path(path).name} with {threads} threads"


def test_encoding_is_repeatable(coded):
    model_dir, reference = coded
    path = next(iter(reference))
    model = lively_model("test-determinism")
    rgb = sample_pixels(96, 160)
    image = SourceImage(rgb=rgb, color_mode="rgb", bit_depth=8, alpha=None, icc_profile=None, exif=None, notes=[])
    again = encode_image(image, model, quality=1, context="grouped", device="cpu")
    assert again == Path(path).read_bytes()
    assert np.array_equal(decode_image(again, model, device="cpu").rgb, decode_image(again, model, device="cpu").rgb)
