"""The background training run: start, status, pause, stop, resume from state, finish with a
Kodak-style check and a TRAINING.md row, and the watcher that yields the CPU to foreground work."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cca_codec.core.checkpoint import load_model
from cca_codec.measure.ceiling import autoencoder_ceiling
from cca_codec.training import background as bg
from cca_codec.training import stint
from cca_codec.training.train import autocast_bf16

TINY = ["--config", "cca-tiny", "--batch", "2", "--crop", "64", "--warmup", "2", "--log-every", "1", "--save-minutes", "0.02"]


def photos(directory: Path, count: int, size: tuple[int, int]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        h, w = size
        yy, xx = np.mgrid[0:h, 0:w] / 23.0
        img = np.stack([np.sin(xx + i), np.cos(yy - i), np.sin(xx * yy / 9)], -1) * 90 + 128
        Image.fromarray((img + rng.normal(0, 5, img.shape)).clip(0, 255).astype(np.uint8)).save(directory / f"p{i}.png")
    return directory


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def train_dir(tmp_path, monkeypatch):
    """A run root of its own; whatever the test started is stopped afterwards."""
    monkeypatch.setenv("CCACODEC_TRAIN_DIR", str(tmp_path / "train"))
    yield tmp_path / "train"
    bg.stop(bg.Run(tmp_path / "train" / bg.DEFAULT_RUN))


def background(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cca_codec.training.background", *args], capture_output=True, text=True, timeout=300, check=check)


def test_start_status_stop_resume_finish(train_dir, tmp_path):
    source = photos(tmp_path / "photos", 6, (300, 320))  # the pack cuts 288x288 crops
    kodak = photos(tmp_path / "kodak", 2, (64, 64))
    models = tmp_path / "models"
    (models / "cca-compact").mkdir(parents=True)
    run = bg.Run(train_dir / "cca-compact")

    # no watcher: on a busy machine (or beside another background run) a yielding run may not get a step in
    started = background("start", "--fresh", "--no-yield", "--source", str(source), "--", *TINY)
    assert "started" in started.stderr
    assert "already running" in background("start", "--fresh").stderr
    pid = run.pid()
    assert pid is not None
    assert os.getpriority(os.PRIO_PROCESS, pid) == 19
    assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    wait_for(lambda: len(run.records()) >= 3 and run.state.exists(), 120, "three logged steps and a state file")

    info = json.loads(background("status", "--json").stdout)
    assert info["running"] and info["steps"] >= 3 and info["cpu_minutes"] >= 0

    background("pause")
    wait_for(lambda: bg._process_state(pid) == "T", 10, "the paused trainer to stop")
    steps = run.records()[-1]["step"]
    time.sleep(1.5)
    assert run.records()[-1]["step"] == steps, "a paused trainer went on"
    assert "paused" in background("status").stdout

    background("stop")
    assert run.pid() is None and not Path(f"/proc/{pid}").exists() or bg._is_zombie(pid)
    import torch

    saved = torch.load(run.state, map_location="cpu", weights_only=False)["step"]
    assert saved >= steps

    background("start", "--no-yield", "--source", str(source))  # the stored recipe, resumed from state.pt
    wait_for(lambda: run.records()[-1]["step"] > saved, 120, "the resumed run to take a step")
    assert "--resume" in run.output.read_text().rsplit("# ", 1)[1]

    row = json.loads(background("finish", "--models-dir", str(models), "--kodak", str(kodak)).stdout)
    assert run.pid() is None
    assert row["steps"] > 0 and row["total_steps"] >= row["steps"]
    anchors = {key for key, name in zip(("jpeg", "vtm", "bpg"), bg.BD_ANCHORS) if (bg.ANCHORS / name).exists()}
    assert set(row["bd"]) >= anchors and row["committed"] == "no"  # the anchors of ../shared, where present
    model = load_model(row["export"])
    assert model.info["steps"] == row["total_steps"]
    card = (Path(row["export"]) / "MODEL_CARD.md").read_text()
    assert f"Whole training, this run and the weights it started from: {row['total_steps']:,} steps" in card
    assert f"qualities 1, 4 and 8, then the top one where it is above 8): {row['kodak']}." in card and "GPU minutes" in card
    # the reconstruction ceiling at the top quality, over the same images
    assert row["ceiling"] == round(autoencoder_ceiling(model, sorted(kodak.glob("*.png"))), 3)
    assert f"top quality): {row['ceiling']:.2f} dB." in card
    assert isinstance(row["top_step_gain"], float)
    assert model.info["gpu_minutes"] == 0
    table = (models / "cca-compact" / "TRAINING.md").read_text()
    bf16 = "bf16" if autocast_bf16("auto", torch.device("cpu")) else "fp32"
    assert stint.STINTS_HEADING in table and f"| b2x64 {bf16} cl constant 1e-4 ema0.998 top3x2 on {stint.cpu_description()} |" in table
    assert f"| {row['ceiling']:.2f} | {row['top_step_gain']:+.2f} |" in table


def test_stint_summary_ends_at_the_saved_state():
    recs = [{"step": n, "minutes": n / 10, "cpu_seconds": 12.0 * n, "loss": 1.0, "bpp": 0.5, "mse_psnr": 30.0,
             "aux_bits_per_element": 2.0} for n in (10, 20, 30, 40)]
    end = {"step": 47, "minutes": 4.7, "cpu_seconds": 564.0}  # stopped 7 steps after the last log record
    summary = stint.stint_summary(recs, 20, 2, end)
    assert (summary["steps"], summary["total_steps"]) == (27, 47)
    assert summary["cpu_minutes"] == round((564.0 - 240.0) / 60 / 2, 1) and summary["wall_minutes"] == 2.7
    assert stint.stint_summary(recs, 20, 2)["total_steps"] == 40  # without the state: the last record


def test_recipe_text_reads_flags_as_the_trainer_does():
    import torch

    bf16 = "bf16" if autocast_bf16("auto", torch.device("cpu")) else "fp32"  # the default, as it resolves here
    assert stint.recipe_text([]) == f"b4x256 {bf16} cl constant 1e-4 ema0.998 top3x2"
    assert stint.recipe_text(["--high-rate-draws", "1"]) == f"b4x256 {bf16} cl constant 1e-4 ema0.998"  # a uniform draw
    decay = ["--bf16", "--schedule", "cosine", "--lr", "8e-5", "--decay-by-time", "--max-minutes", "45"]  # --bf16: older runs' flag
    assert stint.recipe_text(decay) == "b4x256 bf16 cl cosine 8e-5>1e-5/45min ema0.998 top3x2"
    by_cpu = ["--bf16", "--schedule", "cosine", "--decay-by-time", "--max-cpu-minutes", "30"]  # a protocol candidate's decay
    assert stint.recipe_text(by_cpu) == "b4x256 bf16 cl cosine 1e-4>1e-5/30cpumin ema0.998 top3x2"
    old = ["--batch", "8", "--lr", "3e-4", "--lr", "2.5e-4", "--schedule", "cosine", "--lr-final", "3e-6", "--variant", "stop_gradient",
           "--precision", "fp32", "--no-channels-last", "--ema", "0", "--high-rate-draws", "1"]
    assert stint.recipe_text(old) == "b8x256 fp32 cosine 2.5e-4>3e-6 stop_gradient"
    assert stint.recipe_text(["--qualities", "1,2,8,8", "--alpha", "0"]) == f"b4x256 {bf16} cl constant 1e-4 ema0.998 q1,2,8,8 top3x2 alpha0"


def test_append_stint_row_keeps_one_table(tmp_path):
    md = tmp_path / "TRAINING.md"
    md.write_text("# m: training log\n\nintro\n\n## Later section\n\ntext\n")
    row = {"date": "2026-12-01", "steps": 10, "total_steps": 110, "cpu_minutes": 1.5, "total_cpu_minutes": 9.0, "wall_minutes": 3.0,
           "recipe": "b4x256", "loss": 1.0, "bpp": 0.5, "psnr": 28.0, "kodak": "0.3 @ 27", "ceiling": 35.614, "top_step_gain": 0.472,
           "bd": {"jpeg": -3.25, "vtm": None}, "committed": "no"}
    stint.append_stint_row(md, row)
    stint.append_stint_row(md, {**row, "steps": 20, "committed": "yes"})
    text = md.read_text()
    assert text.count(stint.STINTS_HEADING) == 1
    rows = [line for line in text.splitlines() if line.startswith("| 2026-12-01")]
    assert len(rows) == 2 and "| -3.2 |" in rows[0] and "| n/a |" in rows[0] and rows[1].endswith("| yes |")
    assert "| 0.3 @ 27 | 35.61 | +0.47 | -3.2 |" in rows[0]
    header = next(line for line in text.splitlines() if line.startswith("| date"))
    assert header.count("|") == rows[0].count("|") and "| ceiling dB | top step dB |" in header
    stint.append_stint_row(md, {**row, "date": "2026-12-02", "machine": "AMD EPYC, AVX512-BF16"})
    assert "| b4x256 on AMD EPYC, AVX512-BF16 |" in md.read_text()
    stint.append_stint_row(md, {**row, "date": "2026-12-03", "total_cpu_minutes": 1006.24})
    assert "| 1.5 (1,006.2) |" in md.read_text()
    stint.append_stint_row(md, {**row, "date": "2026-12-04", "loss": -15.95, "bpp": 1.2, "psnr": 32.6})
    assert "| -15.950 / 1.200 / 32.60 |" in md.read_text()  # fixed decimals, so the column lines up


def test_kodak_points_end_with_the_top_quality_above_8(tmp_path):
    """q1 / q4 / q8 of an 8-quality curve; a table extended to 9 adds its top point last."""
    def curve(n: int) -> Path:
        path = tmp_path / f"curve{n}.json"
        path.write_text(json.dumps({"name": "m", "results": {"bpp": [0.1 * q for q in range(1, n + 1)],
                                                             "psnr-rgb": [28.0 + q for q in range(1, n + 1)]}}))
        return path

    assert stint.kodak_points(curve(8)) == "0.100 @ 29.00 / 0.400 @ 32.00 / 0.800 @ 36.00"
    assert stint.kodak_points(curve(9)) == "0.100 @ 29.00 / 0.400 @ 32.00 / 0.800 @ 36.00 / 0.900 @ 37.00"


def test_cpu_description_names_the_bf16_instructions():
    intel = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)  Platinum 8480+\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n"
    amd = ("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16\n\n"
           "processor\t: 1\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: other\n")
    assert stint.cpu_description(intel) == "Intel(R) Xeon(R) Platinum 8480+, AMX-BF16"
    assert stint.cpu_description(amd) == "AMD EPYC (family 25, model 17), AVX512-BF16"  # the first processor's
    assert stint.cpu_description("model name\t: Old CPU\nflags\t: fpu sse2\n") == "Old CPU"
    assert stint.cpu_description("")  # some name even without /proc/cpuinfo


def test_trainer_threads_spin_briefly_before_sleeping():
    from cca_codec.base.runtime import SPIN_COUNT

    env = bg.trainer_environment(2)
    assert env["OMP_NUM_THREADS"] == "2" and env["GOMP_SPINCOUNT"] == SPIN_COUNT != "0"


def test_yield_decisions():
    d = bg.YieldDecider(bg.YieldPolicy(busy=0.2, quiet=0.1, quiet_seconds=3.0))
    assert d.step(0.05, 0.0) is None  # quiet and running: nothing to do
    assert d.step(0.9, 0.25) == "stop"
    assert d.step(0.9, 0.5) is None  # already stopped
    assert [d.step(0.05, t) for t in (1.0, 2.0, 3.5)] == [None, None, None]  # quiet for 2.5 s only
    assert d.step(0.5, 3.75) is None  # busy again: the quiet period starts over
    assert [d.step(0.15, t) for t in (4.0, 8.0)] == [None, None]  # between quiet and busy: stays stopped
    assert [d.step(0.05, t) for t in (8.25, 11.0, 11.25)] == [None, None, "continue"]
    assert d.step(0.9, 11.5) == "stop"
    assert [d.step(0.0, t, paused=True) for t in (12.0, 20.0)] == [None, None]  # a user's pause holds


def test_watcher_stops_the_trainer_while_the_foreground_is_busy(tmp_path):
    """A busy child stands in for the trainer, another one (a full core) for the foreground work."""
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    run = bg.Run(tmp_path)
    watcher = threading.Thread(target=bg.watch, args=(run, child.pid, bg.YieldPolicy(period=0.1)), daemon=True)
    try:
        watcher.start()
        time.sleep(0.5)
        foreground = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
        stopped = False
        while foreground.poll() is None and not stopped:
            time.sleep(0.05)
            stopped = bg._process_state(child.pid) == "T"
        assert stopped, "the watcher did not stop the trainer while the foreground was busy"
        os.kill(child.pid, signal.SIGCONT)  # what `resume` after a `pause` does
        time.sleep(0.5)  # the foreground is still busy: stopped again
        assert bg._process_state(child.pid) == "T", "a continued trainer kept running beside the busy foreground"
        foreground.kill()
        foreground.wait()
    finally:
        child.kill()
        child.wait()
    watcher.join(timeout=5)
    assert not watcher.is_alive(), "the watcher outlived its trainer"


TRAINER_STANDIN = """
import signal, sys, time
def save_and_exit(*_):
    t = time.time()
    while time.time() - t < 3:  # saving the state takes CPU time
        pass
    sys.exit(0)
signal.signal(signal.SIGTERM, save_and_exit)
print("ready", flush=True)
while True:
    pass
"""


def test_stop_ends_a_trainer_while_the_foreground_is_busy(tmp_path):
    """The foreground gets busy while the trainer saves its state after `stop`: the watcher must
    not stop it then (it did, and `stop` waited in vain), and must end with it."""
    child = subprocess.Popen([sys.executable, "-c", TRAINER_STANDIN, "cca_codec.training.train"], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n"  # its SIGTERM handler is set (a loaded machine starts Python slowly)
    run = bg.Run(tmp_path)
    run.pid_file.write_text(f"{child.pid}\n")
    watcher = threading.Thread(target=bg.watch, args=(run, child.pid, bg.YieldPolicy(period=0.1)), daemon=True)
    watcher.start()
    time.sleep(0.5)
    result: list = []
    stopper = threading.Thread(target=lambda: result.append(bg.stop(run, timeout=8)), daemon=True)
    foreground = None
    try:
        stopper.start()
        foreground = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        stopper.join(timeout=12)
        assert result == [True], "stop did not see the trainer exit"
        assert child.wait(timeout=5) == 0
        watcher.join(timeout=5)
        assert not watcher.is_alive(), "the watcher outlived the stop"
        assert not run.stopping.exists() and not run.pid_file.exists()
    finally:
        if foreground is not None:
            foreground.kill()
            foreground.wait()
        child.kill()
        child.wait()


def test_lineage_counts_the_warm_start_weights(tmp_path):
    """A run warm-started from a model counts that model's training in its totals."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.json").write_text(json.dumps({"info": {"steps": 4771, "minutes": 163.9}}))
    run = bg.Run(tmp_path / "run")
    run.directory.mkdir()
    assert bg.read_lineage(run) == {"steps": 0, "cpu_minutes": 0.0, "gpu_minutes": 0.0}
    bg.write_lineage(run, model_dir)
    assert bg.read_lineage(run)["steps"] == 4771 and bg.read_lineage(run)["cpu_minutes"] == 163.9
    (model_dir / "model.json").write_text(json.dumps({"info": {"steps": 782, "total_steps": 5551, "total_cpu_minutes": 193.9}}))
    bg.write_lineage(run, model_dir)  # a model exported by a stint carries its whole history
    assert bg.read_lineage(run)["steps"] == 5551 and bg.read_lineage(run)["cpu_minutes"] == 193.9
