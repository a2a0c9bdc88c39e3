"""The equal-minutes protocol (benchmarks/train_protocol.py) end to end on a tiny model: three
candidates side by side on equal CPU budgets (one with an extended quality table), measured
through the codec, tabulated."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_image, write_photos

from cca_codec.core.checkpoint import in_memory_model, save_model_dir
from cca_codec.training.data import build_pack

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_protocol.py"


def test_candidates_on_equal_cpu_budgets(tmp_path):
    init = save_model_dir(in_memory_model("cca-tiny", model_id="seed"), tmp_path / "seed", dtype=torch.float32)
    pack = tmp_path / "pack"
    build_pack(write_photos(tmp_path / "photos", 3, (290, 300), seed=4), pack, val_fraction=0.0)
    kodak = tmp_path / "kodak"
    kodak.mkdir()
    for name in ("kodim01", "kodim02"):
        write_image(kodak, 64, 96, name=f"{name}.png")
    out = tmp_path / "out"
    args = [sys.executable, str(SCRIPT), "--init", str(init), "--data", str(pack), "--kodak", str(kodak), "--images", "kodim01,kodim02",
            "--candidates", "baseline,lr3e-4,extend-q10", "--cpu-minutes", "0.02", "--jobs", "3", "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "protocol.json").read_text())
    assert [r["candidate"] for r in rows] == ["baseline", "lr3e-4", "extend-q10"]
    for row in rows:
        assert row["steps"] >= 1 and row["cpu_minutes"] >= 0.02  # the budget counts the process CPU time
        assert row["qualities"] == [2.0, 4.0, 6.0, 8.0] and len(row["bpp"]) == len(row["psnr"]) == 4
        assert row["last_step_gain"] == round(row["psnr"][-1] - row["psnr"][-2], 3)
        assert abs(sum(row["slice_bit_shares"]) - 1) < 1e-3 and isinstance(row["ceiling"], float)
        trained = torch.load(out / row["candidate"] / "run" / "state.pt", map_location="cpu", weights_only=False)
        assert trained["step"] == row["steps"]
        assert [p[0] for p in row["above"]] == ([9.0, 10.0] if row["candidate"] == "extend-q10" else [])
        assert len(trained["qualities"]) == (10 if row["candidate"] == "extend-q10" else 8)
    assert rows[0]["bd_first"] == 0.0
    lr_run = torch.load(out / "lr3e-4" / "run" / "state.pt", map_location="cpu", weights_only=False)
    assert lr_run["options"]["lr"] == 3e-4 and (out / "lr3e-4" / "model" / "model.json").exists()
    table = done.stdout
    assert "| baseline |" in table and "| lr3e-4 |" in table and "ceiling dB" in table
    assert "above q8" in table and "| q9 " in table.split("| extend-q10 |")[1]

    collected = subprocess.run([sys.executable, str(SCRIPT), "--init", str(init), "--collect", str(out / "lr3e-4"), str(out / "baseline")],
                               capture_output=True, text=True, timeout=120, check=True)
    assert "vs lr3e-4" in collected.stdout and collected.stdout.index("| lr3e-4 |") < collected.stdout.index("| baseline |")


def test_decay_makes_every_candidate_decay_over_its_cpu_budget(tmp_path):
    """--decay: the candidate's trainer decays lr to lr_final over its CPU minutes; the candidate's
    own flags still come after the shared ones, so they win where both set something."""
    sys.path.insert(0, str(SCRIPT.parent))
    from train_protocol import train_command

    from cca_codec.training.train import learning_rate, parse_args

    def options(command):
        return parse_args(command[command.index("--data"):])

    plain = options(train_command("lr3e-4", tmp_path, tmp_path / "pack", tmp_path / "out", 30.0))
    assert plain.schedule == "constant" and learning_rate(5000, plain, 1.0, 29.0) == 3e-4
    decayed = options(train_command("lr3e-4", tmp_path, tmp_path / "pack", tmp_path / "out", 30.0, decay=True))
    assert (decayed.schedule, decayed.decay_by_time, decayed.max_cpu_minutes, decayed.lr) == ("cosine", True, 30.0, 3e-4)
    assert learning_rate(5000, decayed, 1.0, 15.0) == pytest.approx((3e-4 + 1e-5) / 2)
    assert learning_rate(5000, decayed, 1.0, 30.0) == pytest.approx(1e-5)


def test_a_candidate_names_the_pack_it_needs(tmp_path):
    """'hires' trains on the pack of less-downscaled photos: without --hires-data it stops before any
    training and says how to build one."""
    import argparse

    sys.path.insert(0, str(SCRIPT.parent))
    from train_protocol import CANDIDATES, run_candidate

    assert CANDIDATES["hires"].describe() == "recipe unchanged, hires pack"
    a = argparse.Namespace(out=tmp_path, data=tmp_path / "pack", lossless_data=None, hires_data=None)
    with pytest.raises(SystemExit, match=r"hires: needs --hires-data \(.*--short-side 800,1200\)"):
        run_candidate("hires", a, [])
    assert not (tmp_path / "hires").exists()
