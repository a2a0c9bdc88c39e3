"""scripts/device_train.sh, the one-call GPU training chunk, as a CPU dry run: it trains, exports,
checks the export through the codec and leaves the files that would come back under $OUT."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cca_codec.core.checkpoint import load_model
from cca_codec.training.data import build_pack

REPO = Path(__file__).resolve().parent.parent


def test_device_script_dry_run_on_the_cpu(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    build_pack(photos, tmp_path / "pack", val_fraction=0.0)
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "DATA": str(tmp_path / "pack"), "INIT": "none",
           "OUT": str(tmp_path / "out")}
    done = subprocess.run(
        ["bash", "scripts/device_train.sh", str(tmp_path / "run"), "0.05", "--config", "cca-tiny", "--batch", "2", "--crop", "64",
         "--warmup", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    returned = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"model.json", "weights.safetensors", "MODEL_CARD.md", "log.jsonl", "check.cca"} <= returned
    assert "bpp" in done.stdout and "PSNR" in done.stdout.upper()
    model = load_model(tmp_path / "out")
    assert model.config.name == "cca-tiny" and model.info["steps"] >= 1
