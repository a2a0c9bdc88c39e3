"""Training pipeline on the CPU: data pack, a 3-step smoke run with export, bit-exact resume."""
import json
import time

import numpy as np
import pytest
import torch
from conftest import write_photos
from PIL import Image

from cca_codec.base.errors import UsageError
from cca_codec.core.checkpoint import load_model
from cca_codec.core.codec import decode_image, encode_image
from cca_codec.image.io import load_image
from cca_codec.training.data import build_pack, load_split
from cca_codec.training.train import TrainOptions, learning_rate, run


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    """A pack built from 12 generated 'photos' (smooth colour fields with texture)."""
    src = write_photos(tmp_path_factory.mktemp("photos"), 12, (300, 420), seed=0)
    out = tmp_path_factory.mktemp("pack")
    meta = build_pack(src, out, crop=160, val_fraction=0.2)
    return out, meta


def test_pack_has_train_and_validation_crops(pack):
    out, meta = pack
    assert json.loads((out / "pack.json").read_text()) == meta
    assert meta["crops"]["train"] > 0 and meta["crops"]["val"] > 0
    crop = Image.open(next((out / "train").glob("*.jpg")))
    assert crop.size == (160, 160)



def test_short_side_sets_how_far_photos_are_downscaled(tmp_path, capsys):
    """Photos with a short side above the range's top are downscaled into it before cropping (fewer
    crops from less area); 'none' crops them at full size; the pack records the range."""
    from cca_codec.training.data import main as data_main

    src = write_photos(tmp_path / "photos", 3, (700, 760), seed=1)
    small = build_pack(src, tmp_path / "small", crop=64, val_fraction=0.0, short_side=(100, 120))
    full = build_pack(src, tmp_path / "full", crop=64, val_fraction=0.0, short_side=None)
    assert (small["crops"]["train"], full["crops"]["train"]) == (3, 15)  # 1 crop from ~110 px, 5 (the cap) from ~730
    assert small["short_side"] == [100, 120] and full["short_side"] is None
    data_main([str(src), str(tmp_path / "cli"), "--crop", "64", "--val-fraction", "0", "--short-side", "none"])
    assert json.loads((tmp_path / "cli" / "pack.json").read_text())["crops"] == full["crops"]
    with pytest.raises(SystemExit) as bad:
        data_main([str(src), str(tmp_path / "bad"), "--short-side", "600,400"])
    assert bad.value.code == 2 and "0 < MIN <= MAX" in capsys.readouterr().err


def options(pack_dir, out, **kw):
    base = dict(data=str(pack_dir), out=str(out), config="cca-tiny", batch=2, crop=64, warmup=2, steps=100,
                log_every=1, save_every=1000, lr=1e-3, device="cpu")
    base.update(kw)
    return TrainOptions(**base)


def test_three_step_smoke_run_exports_a_working_model(pack, tmp_path):
    o = options(pack[0], tmp_path / "run", export=str(tmp_path / "exported"), export_id="smoke")
    trainer = run(o, max_steps=3)
    assert trainer.step == 3
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["aux_bits_per_element"] > 0 for r in log)
    model = load_model(tmp_path / "exported")
    assert model.model_id == "smoke" and model.info["steps"] == 3
    img = load_image(next((pack[0] / "val").glob("*.jpg")))
    out = decode_image(encode_image(img, model, device="cpu"), model, device="cpu")
    assert out.rgb.shape == img.rgb.shape


def test_resume_is_bit_exact(pack, tmp_path):
    straight = run(options(pack[0], tmp_path / "a"), max_steps=4)
    run(options(pack[0], tmp_path / "b"), max_steps=2)
    resumed = run(options(pack[0], tmp_path / "b", resume=str(tmp_path / "b" / "state.pt")), max_steps=2)
    assert resumed.step == straight.step == 4
    a, b = straight.net.state_dict(), resumed.net.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an uninterrupted run"
    assert all(torch.equal(x, y) for x, y in zip(straight.aux.state_dict().values(), resumed.aux.state_dict().values()))


def test_a_warm_started_run_with_ema_resumes(pack, tmp_path):
    """The background run's case: --init from an exported model (its CDF tables filled), an EMA,
    then a resume, which builds an empty network from the state and loads the tables into it."""
    first = run(options(pack[0], tmp_path / "first", export=str(tmp_path / "exported"), export_id="seed"), max_steps=1)
    assert first.step == 1
    o = options(pack[0], tmp_path / "warm", init=str(tmp_path / "exported"), ema=0.9)
    run(o, max_steps=2)
    resumed = run(options(pack[0], tmp_path / "warm", ema=0.9, resume=str(tmp_path / "warm" / "state.pt")), max_steps=1)
    assert resumed.step == 3
    tables = {k: v for k, v in resumed.ema.state_dict().items() if k.endswith("_quantized_cdf")}
    assert tables and all(v.numel() > 0 for v in tables.values())


def test_lossless_pack_keeps_the_crops_exactly(tmp_path):
    """--lossless stores PNG crops: photos of exactly one crop's size become that one crop, pixel for
    pixel, where the JPEG pack's differ."""
    src = write_photos(tmp_path / "photos", 3, (128, 129), seed=3)  # 128x128 each: one crop, the whole photo
    photos = torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1) for p in sorted(src.glob("*.png"))])
    png_meta = build_pack(src, tmp_path / "png", crop=128, val_fraction=0.0, lossless=True)
    jpeg_meta = build_pack(src, tmp_path / "jpeg", crop=128, val_fraction=0.0)
    assert (png_meta["encoding"], png_meta["jpeg_quality"], jpeg_meta["encoding"]) == ("png", None, "jpeg")
    assert png_meta["crops"]["train"] == 3 and not list((tmp_path / "png" / "train").glob("*.jpg"))
    assert torch.equal(load_split(tmp_path / "png", "train"), photos)
    assert not torch.equal(load_split(tmp_path / "jpeg", "train"), photos)


def test_a_cpu_minute_budget_stops_the_run(pack, tmp_path):
    """--max-cpu-minutes counts the process CPU time of the training steps (every thread)."""
    trainer = run(options(pack[0], tmp_path / "budget", max_cpu_minutes=0.004))  # 0.24 CPU seconds
    assert 1 <= trainer.step < 100
    assert trainer.cpu_seconds >= 0.24


def test_the_cpu_budget_stops_at_the_first_step_past_it(pack, tmp_path, monkeypatch):
    """A process clock that advances 0.1 s per reading: past 0.24 s after the second step, so two steps.
    (Real step costs vary too much from the first step to the next for an exact count.)"""
    readings = iter(0.1 * i for i in range(1000))
    monkeypatch.setattr(time, "process_time", lambda: next(readings))
    trainer = run(options(pack[0], tmp_path / "budget", max_cpu_minutes=0.004))
    assert trainer.step == 2 and trainer.cpu_seconds == pytest.approx(0.3)


def test_a_decay_by_time_follows_whichever_budget_the_call_spends_first():
    """--decay-by-time: the cosine runs over the call's wall minutes or CPU minutes, whichever is
    further spent; without the flag only the steps count."""
    o = TrainOptions(data="", out="", schedule="cosine", lr=1e-4, lr_final=1e-5, warmup=0, steps=10**6,
                     decay_by_time=True, max_minutes=60.0, max_cpu_minutes=30.0)
    assert learning_rate(5, o, 0.0, 0.0) == pytest.approx(1e-4, rel=1e-4)
    assert learning_rate(5, o, 30.0, 0.0) == pytest.approx(5.5e-5, rel=1e-4)  # half the wall minutes
    assert learning_rate(5, o, 30.0, 15.0) == pytest.approx(5.5e-5, rel=1e-4)  # half of each
    assert learning_rate(5, o, 6.0, 30.0) == pytest.approx(1e-5)  # the CPU budget is spent
    assert learning_rate(5, o, 6.0, 40.0) == pytest.approx(1e-5)  # and the rate stays at the floor
    no_wall = TrainOptions(data="", out="", schedule="cosine", warmup=0, steps=10**6, decay_by_time=True, max_cpu_minutes=30.0)
    assert learning_rate(5, no_wall, 500.0, 7.5) == pytest.approx(1e-5 + 0.5 * 9e-5 * (1 + 2 ** -0.5))  # a quarter of the CPU budget
    by_steps = TrainOptions(data="", out="", schedule="cosine", warmup=0, steps=100, max_cpu_minutes=30.0)
    assert learning_rate(50, by_steps, 0.0, 29.0) == pytest.approx(5.5e-5, rel=1e-3)


def test_each_step_sets_its_rate_from_the_minutes_this_call_has_spent(pack, tmp_path, monkeypatch):
    """The trainer hands learning_rate this call's wall and CPU minutes, which grow step by step."""
    import cca_codec.training.train as train

    seen = []
    monkeypatch.setattr(train, "learning_rate", lambda step, o, minutes, cpu_minutes: seen.append((step, minutes, cpu_minutes)) or o.lr)
    run(options(pack[0], tmp_path / "spent", steps=3))
    assert [s for s, _, _ in seen] == [0, 1, 2]
    assert seen[0][1] < seen[1][1] < seen[2][1] and seen[0][2] < seen[1][2] < seen[2][2]


def test_float32_synthesis_stages_train_and_are_checked(pack, tmp_path):
    """--fp32-synthesis-stages reaches g_s of the trained network; a count beyond its stages is refused."""
    trainer = run(options(pack[0], tmp_path / "fp32", precision="bf16", fp32_synthesis_stages=1), max_steps=2)
    assert trainer.step == 2 and trainer.net.g_s.float32_stages == 1
    with pytest.raises(UsageError, match="fp32-synthesis-stages 4"):
        run(options(pack[0], tmp_path / "bad", fp32_synthesis_stages=4), max_steps=1)


def test_the_top_qualities_are_drawn_more_often(pack, tmp_path):
    """The recipe draws the three highest qualities twice as often as each other one; --high-rate-draws 1 is
    uniform; with --qualities the three highest of those given are weighted; 0 is refused."""
    trainer = run(options(pack[0], tmp_path / "draw"), max_steps=0)
    known = [q.quality for q in trainer.qualities]
    drawn = [known[i] for i in trainer.train_qualities.tolist()]
    assert sorted(drawn) == sorted(known + known[-3:])
    assert trainer.quality_choice("", 1).tolist() == list(range(len(known)))
    assert [known[i] for i in trainer.quality_choice("2,3,4,5", 3).tolist()] == [2, 3, 4, 5, 3, 4, 5, 3, 4, 5]
    assert [known[i] for i in trainer.quality_choice("4", 2).tolist()] == [4, 4]
    with pytest.raises(UsageError, match="high-rate-draws 0"):
        trainer.quality_choice("", 0)
