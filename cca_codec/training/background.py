"""The background training run: started in every working stint, resumed where the last one stopped.

    python -m cca_codec.training.background start      # resume (or warm-start from the shipped weights), lowest priority
    python -m cca_codec.training.background status     # steps, steps/s, CPU minutes, last loss  [--json]
    python -m cca_codec.training.background stop       # SIGTERM: the trainer saves its state and exits
    python -m cca_codec.training.background pause      # SIGSTOP, for a clean timing in the foreground; `resume` goes on
    python -m cca_codec.training.background finish     # stop, export the EMA weights, Kodak check, TRAINING.md row
                                              # [--install: copy into models/<id> when Kodak BD-rate improved]

(also `ccacodec train-bg ...`). A run lives in a state directory outside the work tree,
`$CCACODEC_TRAIN_DIR/<run>` (default `~/.cache/ccacodec/train/cca-compact`), which the machine keeps from
one stint to the next: `state.pt` (network, EMA, optimisers, random generators; written atomically every
few minutes and on SIGTERM/SIGINT), `log.jsonl`, `train.log`, `pid`, `recipe.json`. The training pack is
built once into `$CCACODEC_TRAIN_DIR/pack` from the training photographs.

The trainer runs under SCHED_IDLE (where the kernel allows it) and nice 19, with OpenMP threads that
sleep after a short spin (`runtime.SPIN_COUNT` iterations, as the command-line tools): sleeping at once
(OMP_WAIT_POLICY=PASSIVE, GOMP_SPINCOUNT=0, the recipe up to stop 18) made a 4 x 256x256 bf16 step 1.25-1.35 s
against 0.78-0.86 s, because each of the step's thousands of small parallel ops then pays a thread wake-up.
Priority alone is not enough on two cores: a foreground
torch process whose 2-thread parallel regions wait at barriers for the core the trainer holds ran 9x
slower (tests/test_codec.py: 62 s against 7 s). So a small watcher process beside the trainer stops it
(SIGSTOP) within a quarter of a second whenever anything else uses more than a fifth of a core, and lets it
go on (SIGCONT) after the machine has been quiet for a few seconds: foreground work runs at full speed,
and training takes the idle time only.

"CPU minutes" here are minutes of the whole machine: the trainer's process CPU time divided by its
thread count, so a run alone on an idle 2-core machine adds one CPU minute per wall minute.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cca_codec.base.fileio import atomic_write
from cca_codec.base.runtime import SPIN_COUNT

DEFAULT_RUN = "cca-compact"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "train"
DEFAULT_KODAK = REPO.parent / "shared" / "data" / "kodak"
ANCHORS = REPO.parent / "shared" / "anchors"
BD_ANCHORS = ("kodak_jpeg.json", "kodak_vtm.json", "kodak_bpg_444_x265_ycbcr.json")
KODAK_RESULT = "kodak_checkerboard.json"  # the committed weights' Kodak curve, beside them
STINTS_HEADING = "## Background stints"

def train_root() -> Path:
    return Path(os.environ.get("CCACODEC_TRAIN_DIR") or Path.home() / ".cache" / "ccacodec" / "train")


@dataclass
class Run:
    """The files of one background run."""

    directory: Path

    @property
    def state(self) -> Path:
        return self.directory / "state.pt"

    @property
    def pid_file(self) -> Path:
        return self.directory / "pid"

    @property
    def log(self) -> Path:
        return self.directory / "log.jsonl"

    @property
    def output(self) -> Path:
        return self.directory / "train.log"

    @property
    def recipe(self) -> Path:
        return self.directory / "recipe.json"

    @property
    def stopping(self) -> Path:
        """Marker written by `stop`: the trainer is saving its state and exiting."""
        return self.directory / "stopping"

    def pid(self) -> int | None:
        """The trainer's pid while it runs, else None (a stale pid file is removed)."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            cmdline = b""
        if b"cca_codec.training.train" not in cmdline:
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def records(self) -> list[dict]:
        try:
            return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        except OSError:
            return []


def _lower_priority() -> None:
    """In the child, before exec: the lowest CPU priority the kernel offers."""
    os.nice(19)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        pass


def trainer_environment(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    # libgomp (torch's) takes GOMP_SPINCOUNT over the policy: a short spin, then sleep; PASSIVE is
    # for OpenMP runtimes that ignore it
    env.update(OMP_WAIT_POLICY="PASSIVE", GOMP_SPINCOUNT=SPIN_COUNT, OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def ensure_pack(pack: Path, source: Path) -> Path:
    """Build the training pack once (a few minutes at low priority); reuse it afterwards."""
    if (pack / "pack.json").exists():
        return pack
    from .data import build_pack

    print(f"building the training pack {pack} from {source} ...", file=sys.stderr)
    tmp = pack.with_name(pack.name + ".part")
    build_pack(source, tmp)
    tmp.replace(pack)
    return pack


@dataclass
class YieldPolicy:
    """When the watcher stops and continues the trainer: `busy` and `quiet` are the other
    processes' CPU use in cores, measured every `period` seconds; the trainer goes on after
    `quiet_seconds` below `quiet`."""

    period: float = 0.25
    busy: float = 0.2
    quiet: float = 0.1
    quiet_seconds: float = 3.0


def _busy_jiffies() -> int:
    """Busy CPU time of the whole machine (user + nice + system + irq + softirq + steal), in clock ticks."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return user + nice + system + irq + softirq + steal


def _process_jiffies(pid: int) -> int | None:
    """utime + stime of a process (all its threads), in clock ticks; None once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


class YieldDecider:
    """The watcher's decisions, from one measurement per period of the other processes' CPU use:
    stop at once above `busy`; go on after `quiet_seconds` below `quiet`, unless paused."""

    def __init__(self, policy: YieldPolicy) -> None:
        self.policy, self.stopped, self.quiet_since = policy, False, None

    def step(self, other_cores: float, now: float, paused: bool = False) -> str | None:
        """Returns "stop", "continue" or None (nothing to do)."""
        p = self.policy
        if other_cores > p.busy:
            self.quiet_since = None
            if not self.stopped:
                self.stopped = True
                return "stop"
        elif self.stopped and other_cores < p.quiet and not paused:
            self.quiet_since = self.quiet_since if self.quiet_since is not None else now
            if now - self.quiet_since >= p.quiet_seconds:
                self.stopped, self.quiet_since = False, None
                return "continue"
        else:
            self.quiet_since = None
        return None


def watch(run: Run, pid: int, policy: YieldPolicy = YieldPolicy()) -> None:
    """Stop the trainer while other work uses the CPU, continue it when the machine is quiet;
    return when the trainer has exited, or at once (after continuing it) once `stop` has marked
    the run `stopping`: a trainer that is saving its state must not be stopped again. A `paused`
    file in the run directory (user's `pause`) keeps it stopped; after the user's `resume` it is
    stopped again at once if the foreground is busy."""
    hz = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    decider = YieldDecider(policy)
    last_total, last_trainer, last_me = _busy_jiffies(), _process_jiffies(pid), _process_jiffies(me)
    while last_trainer is not None and not _is_zombie(pid):
        time.sleep(policy.period)
        total, trainer, mine = _busy_jiffies(), _process_jiffies(pid), _process_jiffies(me)
        if trainer is None or mine is None:
            break
        other = (total - last_total - (trainer - last_trainer) - (mine - last_me)) / hz / policy.period
        last_total, last_trainer, last_me = total, trainer, mine
        if run.stopping.exists():
            os.kill(pid, signal.SIGCONT)
            return
        # the trainer's real state: a user's `resume` continues it behind the decider's back
        decider.stopped = _process_state(pid) == "T"
        action = decider.step(other, time.monotonic(), (run.directory / "paused").exists())
        if action:
            os.kill(pid, signal.SIGSTOP if action == "stop" else signal.SIGCONT)


def start(
    run: Run, *, init: str | None, data: Path, source: Path, threads: int, extra: list[str], fresh: bool = False,
    yield_cpu: bool = True, restart: bool = False,
) -> int:
    """Start the trainer detached: resuming from state.pt when there is one, else warm-started
    from the model `init` (default: the default model), or from random weights with `fresh`.
    With `yield_cpu` a watcher stops it while other work uses the CPU (two yielding runs on one
    machine would stop each other: run at most one so). `restart` archives the run directory
    first (e.g. to go on from weights trained on a GPU). Returns its pid."""
    pid = run.pid()
    if pid is not None:
        print(f"already running (pid {pid}): {run.directory}", file=sys.stderr)
        return pid
    if restart and run.directory.exists():
        archive = run.directory.with_name(f"{run.directory.name}.{datetime.now(timezone.utc):%Y%m%dT%H%M%S}")
        run.directory.rename(archive)
        print(f"archived the previous run as {archive}", file=sys.stderr)
    run.directory.mkdir(parents=True, exist_ok=True)
    # the recipe is the trainer's defaults (cca_codec.training.train.TrainOptions) plus the flags given after
    # `start --`, which the run keeps until the next `start -- FLAGS`
    if extra or not run.recipe.exists():
        recipe = extra
    else:
        recipe = json.loads(run.recipe.read_text())["args"]
    atomic_write(run.recipe, (json.dumps({"args": recipe}, indent=2) + "\n").encode())
    pack = ensure_pack(data, source)
    from cca_codec.core.checkpoint import resolve_model_dir

    args = [sys.executable, "-m", "cca_codec.training.train", "--data", str(pack), "--out", str(run.directory)]
    if run.state.exists():
        args += ["--resume", str(run.state)]
    elif not fresh:
        init_dir = resolve_model_dir(init)
        args += ["--init", str(init_dir)]
        write_lineage(run, init_dir)
    args += recipe
    with open(run.output, "ab") as out:
        out.write(f"\n# {datetime.now(timezone.utc).isoformat(timespec='seconds')} start: {' '.join(args)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=run.directory, env=trainer_environment(threads),
            preexec_fn=_lower_priority, start_new_session=True,
        )
    atomic_write(run.pid_file, f"{proc.pid}\n".encode())
    (run.directory / "paused").unlink(missing_ok=True)
    run.stopping.unlink(missing_ok=True)
    origin = "resuming" if "--resume" in args else ("from random weights" if fresh else "from " + args[args.index("--init") + 1])
    print(f"started (pid {proc.pid}, {origin}{'' if yield_cpu else ', not yielding'}): {run.directory}", file=sys.stderr)
    if yield_cpu:
        with open(run.output, "ab") as out:
            subprocess.Popen(
                [sys.executable, "-m", "cca_codec.training.background", "--run", run.directory.name, "_watch", str(proc.pid)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=trainer_environment(1), start_new_session=True,
            )
    return proc.pid


def write_lineage(run: Run, init_dir: Path) -> None:
    """Record what the warm-start weights already had behind them (`lineage.json`: steps, machine
    CPU minutes and GPU minutes from their model.json), so stint totals count the model's whole training."""
    from cca_codec.core.checkpoint import training_totals

    info = json.loads((init_dir / "model.json").read_text()).get("info", {})
    steps, cpu_minutes = training_totals(info)
    lineage = {"from": str(init_dir), "steps": steps, "cpu_minutes": cpu_minutes, "gpu_minutes": float(info.get("gpu_minutes", 0.0))}
    atomic_write(run.directory / "lineage.json", (json.dumps(lineage, indent=2) + "\n").encode())


def read_lineage(run: Run) -> dict:
    try:
        return json.loads((run.directory / "lineage.json").read_text())
    except (OSError, ValueError):
        return {"steps": 0, "cpu_minutes": 0.0, "gpu_minutes": 0.0}


def stop(run: Run, timeout: float = 300.0) -> bool:
    """SIGTERM the trainer and wait until it has saved its state and exited. False if none ran."""
    pid = run.pid()
    if pid is None:
        return False
    run.stopping.touch()  # the watcher continues the trainer and ends
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            state = _process_state(pid)
            if state in (None, "Z"):
                break
            if state == "T":  # paused, or stopped by the watcher just before it saw the marker
                os.kill(pid, signal.SIGCONT)
            time.sleep(0.5)
        else:
            raise TimeoutError(f"the trainer (pid {pid}) did not exit within {timeout:.0f} s")
    finally:
        run.stopping.unlink(missing_ok=True)
    run.pid_file.unlink(missing_ok=True)
    (run.directory / "paused").unlink(missing_ok=True)
    return True


def pause(run: Run, paused: bool) -> bool:
    """Pause the trainer (until `pause(run, False)`), e.g. for a timing that must be clean; the
    watcher leaves a paused trainer stopped. False if none runs."""
    pid = run.pid()
    if pid is None:
        return False
    if paused:
        (run.directory / "paused").touch()
        os.kill(pid, signal.SIGSTOP)
    else:
        (run.directory / "paused").unlink(missing_ok=True)
        os.kill(pid, signal.SIGCONT)
    return True


def _process_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, T = stopped, Z = zombie), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _is_zombie(pid: int) -> bool:
    return _process_state(pid) in (None, "Z")


def cpu_minutes(record: dict, threads: int) -> float:
    """Machine-minutes of CPU (process CPU time / threads) behind a log record."""
    return record.get("cpu_seconds", 0.0) / 60 / threads


def status(run: Run, threads: int) -> dict:
    """Where the run stands: running or not, steps, recent steps/s, CPU and wall minutes, last terms."""
    recs = run.records()
    info: dict = {"run": str(run.directory), "pid": run.pid(), "state_saved": None, "steps": 0}
    info["running"] = info["pid"] is not None
    info["yielding"] = info["running"] and _process_state(info["pid"]) == "T"
    info["paused"] = (run.directory / "paused").exists()
    if run.state.exists():
        info["state_saved"] = datetime.fromtimestamp(run.state.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    if not info["running"] and run.output.exists():  # why it stopped, e.g. a traceback
        info["last_output"] = run.output.read_text(errors="replace").splitlines()[-3:]
    if recs:
        last = recs[-1]
        window = [r for r in recs if last["minutes"] - r["minutes"] <= 10 and r["step"] < last["step"]]
        if window:
            first = window[0]
            dt = (last["minutes"] - first["minutes"]) * 60
            info["steps_per_s_recent"] = round((last["step"] - first["step"]) / dt, 3) if dt > 0 else None
        info.update(
            steps=last["step"], wall_minutes=round(last["minutes"], 1), cpu_minutes=round(cpu_minutes(last, threads), 1),
            loss=round(last["loss"], 4), bpp=round(last["bpp"], 4), psnr=round(last["mse_psnr"], 2), lr=last["lr"],
            aux_bits_per_element=round(last["aux_bits_per_element"], 2),
        )
    return info


def _print_status(info: dict) -> None:
    state = "not running"
    if info["running"]:
        state = f"running (pid {info['pid']}{', paused' if info['paused'] else ', yielding to foreground work' if info['yielding'] else ''})"
    print(f"{info['run']}: {state}; state saved {info['state_saved'] or 'never'}")
    for line in info.get("last_output", []):
        print(f"  train.log: {line}")
    if info["steps"]:
        print(
            f"step {info['steps']}  {info.get('steps_per_s_recent') or '?'} steps/s (last 10 min)  "
            f"{info['cpu_minutes']} CPU min  {info['wall_minutes']} wall min  loss {info['loss']}  "
            f"bpp {info['bpp']}  PSNR {info['psnr']} dB  lr {info['lr']:.2e}  aux bits/elem {info['aux_bits_per_element']}"
        )


def stint_summary(recs: list[dict], since_step: int, threads: int, end: dict | None = None) -> dict:
    """Steps, CPU/wall minutes and mean training terms of the records after `since_step`.

    `end`: the run's saved state ("step", "minutes", "cpu_seconds"), where the stint really
    ended; the steps after the last log record count too. Without it the last record is the end."""
    new = [r for r in recs if r["step"] > since_step]
    if not new:
        return {"steps": 0}
    before = [r for r in recs if r["step"] <= since_step]
    base = before[-1] if before else {"step": since_step, "minutes": 0.0, "cpu_seconds": 0.0}
    last = end if end is not None and end["step"] >= new[-1]["step"] else new[-1]

    def mean(key: str) -> float:
        return sum(r[key] for r in new) / len(new)

    return {
        "steps": last["step"] - base["step"], "total_steps": last["step"],
        "cpu_minutes": round(cpu_minutes(last, threads) - cpu_minutes(base, threads), 1),
        "total_cpu_minutes": round(cpu_minutes(last, threads), 1),
        "wall_minutes": round(last["minutes"] - base["minutes"], 1),
        "loss": round(mean("loss"), 3), "bpp": round(mean("bpp"), 3), "psnr": round(mean("mse_psnr"), 2),
        "aux_bits_per_element": round(mean("aux_bits_per_element"), 2),
    }


def kodak_check(model_dir: Path, kodak: Path, out: Path, limit: int | None = None) -> Path:
    """Kodak, every quality, checkerboard, through the real codec (`ccacodec eval`); returns the curve file."""
    args = [sys.executable, "-m", "cca_codec", "eval", str(kodak), "--model", str(model_dir), "--context", "checkerboard",
            "--out", str(out), "--no-progress"]
    if limit:
        args += ["--limit", str(limit)]
    subprocess.run(args, check=True, stdout=sys.stderr)
    return next(out.glob("*checkerboard*.json"))


def bd_rates(curve: Path, references: dict[str, Path]) -> dict[str, float | None]:
    """BD-rate (%) of `curve` against each named reference curve file (None where they do not overlap)."""
    from cca_codec.measure.bdrate import load_curve

    _, bpp, psnr = load_curve(curve)
    return bd_rates_of(bpp, psnr, {name: load_curve(path)[1:] for name, path in references.items()})


def bd_rates_of(bpp: list[float], psnr: list[float], references: dict[str, tuple[list[float], list[float]]]) -> dict[str, float | None]:
    """BD-rate (%) of the curve (bpp, psnr) against each named reference (bpp, psnr) curve, rounded
    to 0.01 (None where they do not overlap)."""
    from cca_codec.measure.bdrate import bd_rate

    out: dict[str, float | None] = {}
    for name, (rb, rp) in references.items():
        try:
            out[name] = round(bd_rate(rb, rp, bpp, psnr), 2)
        except ValueError:
            out[name] = None
    return out


def append_stint_row(training_md: Path, row: dict) -> None:
    """Append one row to TRAINING.md's table of background stints (the table is created once)."""
    text = training_md.read_text() if training_md.exists() else f"# {training_md.parent.name}: training log\n"
    header = (
        f"\n{STINTS_HEADING}\n\n"
        "One row per stint of the background run (`python -m cca_codec.training.background finish`). CPU minutes are minutes of\n"
        "the whole 2-core machine (process CPU time / threads); Kodak: all 24 images, checkerboard, bpp from file sizes,\n"
        "PSNR-RGB per image then averaged; BD-rates in %, negative = fewer bits. \"vs shipped\" compares with the\n"
        "weights committed at the time. Ceiling: PSNR-RGB of g_s(g_a(x)) without quantisation at the top quality\n"
        "(`python -m cca_codec.measure.ceiling`), the most any rate can buy; top step: the PSNR the top quality buys over the one\n"
        "below it. The Kodak column ends with the top quality where the table goes above 8.\n\n"
        "| date | steps (total) | CPU min (total) | wall min | recipe | train loss / bpp / PSNR | Kodak q1 / q4 / q8 (/ top) bpp @ dB | "
        "ceiling dB | top step dB | vs JPEG | vs VTM | vs BPG | vs shipped | committed |\n"
        "|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|\n"
    )
    if STINTS_HEADING not in text:
        text = text.rstrip("\n") + "\n" + header
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.1f}"

    def db(v: float | None, sign: str = "") -> str:
        return "n/a" if v is None else f"{v:{sign}.2f}"

    recipe = f"{row['recipe']} on {row['machine']}" if row.get("machine") else row["recipe"]
    line = (
        f"| {row['date']} | {row['steps']:,} ({row['total_steps']:,}) | {row['cpu_minutes']:,.1f} ({row['total_cpu_minutes']:,.1f}) | "
        f"{row['wall_minutes']} | {recipe} | {row['loss']} / {row['bpp']} / {row['psnr']} | {row['kodak']} | "
        f"{db(row.get('ceiling'))} | {db(row.get('top_step_gain'), '+')} | {fmt(row['bd'].get('jpeg'))} | {fmt(row['bd'].get('vtm'))} | {fmt(row['bd'].get('bpg'))} | "
        f"{fmt(row['bd'].get('shipped'))} | {row['committed']} |\n"
    )
    lines = text.rstrip("\n").split("\n")
    start = lines.index(STINTS_HEADING)
    end = start + 1
    while end < len(lines) and not lines[end].startswith("## "):
        end += 1
    while end > start and not lines[end - 1].startswith("|"):
        end -= 1
    lines.insert(end, line.rstrip("\n"))
    atomic_write(training_md, ("\n".join(lines) + "\n").encode())


def _short_number(v: float) -> str:
    """1e-4, 2.5e-4, 8e-5: a learning rate as people write it."""
    mantissa, exponent = f"{v:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _recipe_text(args: list[str]) -> str:
    """The recipe the trainer runs with these flags, compactly: 'b4x256 bf16 cl constant 1e-4
    ema0.998', or for a decay 'cosine 1e-4>1e-5/45min' (over the call's wall minutes with
    --decay-by-time; '/30cpumin' over its CPU minutes). The flags are read by the trainer's own
    parser (defaults included, a flag given twice counts once, the last), and `auto` precision as
    it resolves on this machine's CPU."""
    import torch

    from .train import HIGH_RATE_QUALITIES, autocast_bf16, parse_args

    o = parse_args(["--data", "-", "--out", "-", *args])
    parts = [f"b{o.batch}x{o.crop}", "bf16" if autocast_bf16(o.precision, torch.device("cpu")) else "fp32"]
    if o.channels_last:
        parts.append("cl")
    lr = _short_number(o.lr)
    if o.schedule == "cosine":
        lr += f">{_short_number(o.lr_final)}"
        if o.decay_by_time and o.max_minutes:
            lr += f"/{o.max_minutes:g}min"
        if o.decay_by_time and o.max_cpu_minutes:
            lr += f"/{o.max_cpu_minutes:g}cpumin"
    parts += [o.schedule, lr]
    if o.ema:
        parts.append(f"ema{o.ema:g}")
    if o.variant != "official":
        parts.append(o.variant)
    if o.qualities:
        parts.append(f"q{o.qualities}")
    if o.high_rate_draws != 1:
        parts.append(f"top{HIGH_RATE_QUALITIES}x{o.high_rate_draws}")
    if o.alpha != 1.0:
        parts.append(f"alpha{o.alpha:g}")
    return " ".join(parts)


BF16_FLAGS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("avx_vnni", "AVX-VNNI"))
"""/proc/cpuinfo flags that make bf16 training fast, best first, with the names TRAINING.md gives them."""


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU a stint trained on, for its TRAINING.md row: model name and its best bf16
    instructions ("AMD EPYC, AVX512-BF16"). A CPU minute buys different numbers of steps on
    different CPUs, so the learning curve needs it. `cpuinfo`: /proc/cpuinfo's text (read when None)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    name, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not name:
            name = " ".join(value.split())
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    best = next((label for flag, label in BF16_FLAGS if flag in flags), None)
    return f"{name}, {best}" if best else name


def top_step_gain(curve: Path) -> float | None:
    """PSNR (dB) the top quality buys over the one below it on a curve (None for a single point)."""
    from cca_codec.measure.bdrate import load_curve

    _, _, psnr = load_curve(curve)
    return round(psnr[-1] - psnr[-2], 3) if len(psnr) > 1 else None


def kodak_ceiling(model_dir: Path, kodak: Path, limit: int | None = None) -> float:
    """The reconstruction ceiling (`cca_codec.measure.ceiling`) at the model's top quality over the Kodak images."""
    from cca_codec.core.checkpoint import load_model
    from cca_codec.measure.ceiling import autoencoder_ceiling
    from cca_codec.measure.evaluate import find_images

    return round(autoencoder_ceiling(load_model(model_dir), find_images(kodak, limit)), 3)


def _kodak_points(curve: Path) -> str:
    """'bpp @ dB' at qualities 1, 4 and 8 of a Kodak curve, and at its top quality when that is above 8."""
    from cca_codec.measure.bdrate import load_curve

    _, bpp, psnr = load_curve(curve)
    picks = [i for i in (0, 3, 7) if i < len(bpp)] + ([len(bpp) - 1] if len(bpp) > 8 else [])
    return " / ".join(f"{bpp[i]:.3f} @ {psnr[i]:.2f}" for i in picks)


def finish(run: Run, *, model_id: str, models_dir: Path, kodak: Path, threads: int, install: bool, limit: int | None) -> dict:
    """Stop, export the EMA weights, run the Kodak check (every quality through the codec, and the
    reconstruction ceiling at the top quality), append the TRAINING.md row and, with
    `install`, copy the weights into `models_dir/model_id` when BD-rate against the shipped
    weights is negative. Returns the row."""
    import shutil

    import torch

    from cca_codec.core.checkpoint import record_replaced_weights

    from .train import export_state

    stop(run)
    if not run.state.exists():
        raise FileNotFoundError(f"no training state in {run.directory}: nothing to export")
    state = torch.load(run.state, map_location="cpu", weights_only=False)
    step = state["step"]
    stamp = f"step{step}"
    export = export_state(run.state, run.directory / "export" / stamp / model_id, model_id)
    curve = kodak_check(export, kodak, run.directory / "kodak" / stamp, limit)
    ceiling = kodak_ceiling(export, kodak, limit)
    shipped_dir = models_dir / model_id
    references = {"jpeg": ANCHORS / BD_ANCHORS[0], "vtm": ANCHORS / BD_ANCHORS[1], "bpg": ANCHORS / BD_ANCHORS[2]}
    if (shipped_dir / KODAK_RESULT).exists():
        references["shipped"] = shipped_dir / KODAK_RESULT
    bd = bd_rates(curve, {k: v for k, v in references.items() if v.exists()})
    marks = _stint_marks(run)
    since = marks[-1] if marks else 0
    end = {"step": step, "minutes": state["minutes"], "cpu_seconds": state.get("cpu_seconds", 0.0)}
    summary = stint_summary(run.records(), since, threads, end)
    if summary.get("steps"):
        lineage = read_lineage(run)
        summary["total_steps"] += lineage["steps"]
        summary["total_cpu_minutes"] = round(summary["total_cpu_minutes"] + lineage["cpu_minutes"], 1)
        _describe_export(export, summary, float(lineage.get("gpu_minutes", 0.0)), _kodak_points(curve), ceiling, bd)
    improved = bd.get("shipped") is not None and bd["shipped"] < 0
    committed = "no"
    if install and improved and limit is None:
        record_replaced_weights(shipped_dir, datetime.now(timezone.utc).date().isoformat())
        for name in ("model.json", "weights.safetensors", "MODEL_CARD.md"):
            shutil.copyfile(export / name, shipped_dir / name)
        shutil.copyfile(curve, shipped_dir / KODAK_RESULT)
        committed = "yes"
    recipe = json.loads(run.recipe.read_text())["args"] if run.recipe.exists() else []
    row = {
        "date": datetime.now(timezone.utc).date().isoformat(), **summary, "recipe": _recipe_text(recipe), "machine": cpu_description(),
        "kodak": _kodak_points(curve), "ceiling": ceiling, "top_step_gain": top_step_gain(curve), "bd": bd, "committed": committed, "export": str(export), "curve": str(curve),
    }
    if summary.get("steps"):
        append_stint_row(shipped_dir / "TRAINING.md", row)
        with open(run.directory / "stints.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **row}) + "\n")
    return row


def _describe_export(export: Path, summary: dict, gpu_minutes: float, kodak: str, ceiling: float, bd: dict[str, float | None]) -> None:
    """Complete the exported model.json's info and model card (whose own lines count only this
    run) with the model's whole training (this run plus its lineage) and its Kodak check."""
    meta = json.loads((export / "model.json").read_text())
    meta["info"].update(
        total_steps=summary["total_steps"], total_cpu_minutes=summary["total_cpu_minutes"], gpu_minutes=gpu_minutes
    )
    atomic_write(export / "model.json", (json.dumps(meta, indent=2) + "\n").encode())
    against = {"shipped": "the weights shipped before", "jpeg": "the JPEG anchor", "vtm": "VTM", "bpg": "BPG"}
    rates = ", ".join(f"{bd[k]:+.1f} % against {name}" for k, name in against.items() if bd.get(k) is not None)
    card = (export / "MODEL_CARD.md").read_text()
    lines = (
        f"Whole training, this run and the weights it started from: {summary['total_steps']:,} steps, "
        f"{summary['total_cpu_minutes']:,.1f} CPU minutes (2-core machine minutes, see TRAINING.md), "
        f"{gpu_minutes:g} GPU minutes.\n\n"
        f"Kodak check (checkerboard; bpp @ PSNR-RGB dB at qualities 1, 4 and 8, then the top one where it is above 8): {kodak}."
        + (f" BD-rate: {rates}." if rates else "")
        + f" Reconstruction ceiling (g_s(g_a(x)) unquantised, top quality): {ceiling:.2f} dB.\n"
    )
    atomic_write(export / "MODEL_CARD.md", (card.rstrip("\n") + "\n\n" + lines).encode())


def _stint_marks(run: Run) -> list[int]:
    """The steps at which earlier stints ended."""
    try:
        return [json.loads(line)["step"] for line in (run.directory / "stints.jsonl").read_text().splitlines() if line.strip()]
    except OSError:
        return []


def main(argv: list[str] | None = None, prog: str = "python -m cca_codec.training.background") -> None:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=DEFAULT_RUN, help="run name (a folder of $CCACODEC_TRAIN_DIR)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="trainer threads (default: every core)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start", help="start or resume the background run")
    s.add_argument("--init", default=None, help="model id or directory to warm-start a new run from (default: the default model)")
    s.add_argument("--data", type=Path, default=None, help="training pack (default: $CCACODEC_TRAIN_DIR/pack, built when missing)")
    s.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="photographs to build the pack from")
    s.add_argument("--fresh", action="store_true", help="a new run starts from random weights instead of --init")
    s.add_argument("--restart", action="store_true", help="archive the run's directory and start anew from --init (e.g. GPU weights)")
    s.add_argument("--no-yield", action="store_true", help="no watcher: the trainer keeps running (SCHED_IDLE) beside foreground work")
    s.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: trainer flags replacing the stored recipe's additions")
    st = sub.add_parser("status", help="print where the run stands")
    st.add_argument("--json", action="store_true")
    sub.add_parser("stop", help="stop the run (its state is saved)")
    sub.add_parser("pause", help="pause the run (SIGSTOP) for a clean foreground timing")
    sub.add_parser("resume", help="let a paused run go on (SIGCONT)")
    w = sub.add_parser("_watch", help=argparse.SUPPRESS)
    w.add_argument("pid", type=int)
    f = sub.add_parser("finish", help="stop, export, Kodak check, TRAINING.md row")
    f.add_argument("--model-id", default="cca-compact")
    f.add_argument("--models-dir", type=Path, default=REPO / "models")
    f.add_argument("--kodak", type=Path, default=DEFAULT_KODAK)
    f.add_argument("--limit", type=int, default=None, help="first N Kodak images only (a quick look; never installs)")
    f.add_argument("--install", action="store_true", help="copy the weights into the models folder when BD-rate improved")
    a = p.parse_args(argv)
    run = Run(train_root() / a.run)
    if a.command == "start":
        extra = [x for x in a.train_args if x != "--"]
        start(run, init=a.init, data=a.data or train_root() / "pack", source=a.source, threads=a.threads, extra=extra, fresh=a.fresh, yield_cpu=not a.no_yield, restart=a.restart)
    elif a.command == "status":
        info = status(run, a.threads)
        print(json.dumps(info, indent=2)) if a.json else _print_status(info)
    elif a.command == "stop":
        print("stopped" if stop(run) else "not running", file=sys.stderr)
    elif a.command == "_watch":
        watch(run, a.pid)
    elif a.command in ("pause", "resume"):
        sent = pause(run, a.command == "pause")
        print(("paused" if a.command == "pause" else "resumed") if sent else "not running", file=sys.stderr)
    else:
        row = finish(run, model_id=a.model_id, models_dir=a.models_dir, kodak=a.kodak, threads=a.threads, install=a.install, limit=a.limit)
        print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
