"""Training: one network for every quality, trained with the CCA loss, resumable in chunks.

    python -m cca_codec.training.train --data data_pack --out runs/r1 --config cca-compact --max-minutes 8
    python -m cca_codec.training.train --data data_pack --out runs/r1 --resume runs/r1/state.pt ...
    python -m cca_codec.training.train ... --init models/cca-compact   # start from shipped weights
    torchrun --nproc-per-node 8 -m cca_codec.training.train ... --batch 64   # data-parallel, 8 per GPU

Each step draws a batch of random crops; every sample gets its own quality (lambda) drawn from
the quality table; the context mode (grouped or checkerboard) is drawn per step. The state file
holds the network, the auxiliary model, both optimisers and every random generator, so a run
resumes bit-for-bit. SIGTERM/SIGINT end the run cleanly after the current step with a state
file written.

Under torchrun (see cca_codec.training.distributed) --batch is the global batch, split evenly over the
processes, which draw it together: N processes train as one process with the same --batch does,
a run resumes under any number of processes that divides --batch, and rank 0 alone writes the
state, the log and the export.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cca_codec.base.errors import UsageError
from cca_codec.core.checkpoint import export_weights, load_model
from cca_codec.core.device import resolve_device
from cca_codec.core.precision import FAST, TRAINING_PRECISIONS, resolve_precision
from cca_codec.nn.aux import AuxEntropyModel
from cca_codec.nn.config import ModelConfig, get_config
from cca_codec.nn.loss import CCA_VARIANTS, CCALoss, LossTerms
from cca_codec.nn.model import CCAModel
from cca_codec.nn.quality import DEFAULT_QUALITIES, quality_table_from_dicts

from .data import CropSampler, load_split
from .distributed import World, launch

STATE_FILE = "state.pt"
HIGH_RATE_QUALITIES = 3
"""How many of the highest qualities `--high-rate-draws` draws more often."""
LOG_FILE = "log.jsonl"


@dataclass
class TrainOptions:
    """Every option of a run; the defaults are the recipe of the never-ending background run
    (`ccacodec train-bg`, README "The background run"), chosen by the equal-minutes protocol
    (benchmarks/train_protocol.py, models/cca-compact/TRAINING.md): batch 4 x 256x256, bf16
    autocast where it is fast with channels-last tensors, the three highest qualities drawn twice as
    often as each other one, Adam at a constant rate after a short warm-up, and an exponential moving
    average of the weights for export. Such a run has no end of its own: `max_minutes`,
    `max_cpu_minutes`, `steps` or a signal end it, its state saved."""

    data: str
    out: str
    config: str = "cca-compact"
    init: str | None = None
    resume: str | None = None
    steps: int = 100_000_000
    max_minutes: float = 0.0
    max_cpu_minutes: float = 0.0
    batch: int = 4
    crop: int = 256
    lr: float = 1e-4
    lr_final: float = 1e-5
    warmup: int = 100
    aux_lr: float = 1e-3
    clip: float = 1.0
    variant: str = "official"
    alpha: float = 1.0
    checkerboard_prob: float = 0.5
    qualities: str = ""
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    schedule: str = "constant"
    ema: float = 0.998
    seed: int = 0
    log_every: int = 20
    save_every: int = 0
    save_minutes: float = 5.0
    export: str | None = None
    export_id: str | None = None
    decay_by_time: bool = False
    fp32_synthesis_stages: int = 0
    high_rate_draws: int = 2


def autocast_bf16(precision: str, device: torch.device) -> bool:
    """Whether a run trains under bf16 autocast: `bf16`, or `auto` on a GPU or on a CPU with native
    bf16 (AMX, AVX512-BF16: 1.5-3x float32's steps per second there); `fp32` never."""
    if precision not in TRAINING_PRECISIONS:
        raise UsageError(f"--precision {precision!r}: use one of {', '.join(TRAINING_PRECISIONS)}")
    if precision == "auto":
        return device.type == "cuda" or resolve_precision("auto", device) == FAST
    return precision == FAST


SCHEDULES = ("cosine", "constant")
BATCH_HELP = (
    "the global batch (default %(default)s): under torchrun with N processes each trains on batch/N "
    "of its samples (batch must divide by N), and the run matches one process with this batch"
)


def learning_rate(step: int, o: TrainOptions, minutes_this_run: float = 0.0, cpu_minutes_this_run: float = 0.0) -> float:
    """Linear warm-up over the run's first `warmup` steps, then either `constant` at lr (for a run
    that never ends: export the EMA weights) or a `cosine` decay from lr to lr_final over `steps`,
    or, with `decay_by_time`, over this call's budget when that ends first: `max_minutes` of wall
    time or `max_cpu_minutes` of process CPU time (all threads), whichever the call spends first."""
    if step < o.warmup:
        return o.lr * (step + 1) / o.warmup
    if o.schedule == "constant":
        return o.lr
    t = (step - o.warmup) / max(o.steps - o.warmup, 1)
    if o.decay_by_time and o.max_minutes:
        t = max(t, minutes_this_run / o.max_minutes)
    if o.decay_by_time and o.max_cpu_minutes:
        t = max(t, cpu_minutes_this_run / o.max_cpu_minutes)
    t = min(t, 1.0)
    return o.lr_final + 0.5 * (o.lr - o.lr_final) * (1 + math.cos(math.pi * t))


class WeightAverage:
    """Exponential moving average of a network's floating-point parameters and buffers:
    avg <- decay * avg + (1 - decay) * current after every step (other buffers are copied).
    With a constant learning rate it gives what a decay to a low rate would, without ending
    the run."""

    def __init__(self, net: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise UsageError(f"--ema {decay}: the decay must lie in (0, 1), e.g. 0.998")
        self.decay = decay
        self.avg = {k: v.detach().clone() for k, v in net.state_dict().items()}

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        floats_avg, floats_now = [], []
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                floats_avg.append(self.avg[k])
                floats_now.append(v.detach())
            else:
                self.avg[k].copy_(v)
        torch._foreach_lerp_(floats_avg, floats_now, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.avg

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Take the saved averages; a buffer whose size differs (the entropy models' CDF tables of
        a warm-started network, empty in a newly built one) is replaced, not copied into."""
        for k, v in state.items():
            if self.avg[k].shape == v.shape:
                self.avg[k].copy_(v)
            else:
                self.avg[k] = v.detach().clone().to(self.avg[k].device)


class Objective(nn.Module):
    """The network and the CCA loss (which holds G) as one module: the forward pass whose
    parameters DDP keeps in step."""

    def __init__(self, net: CCAModel, loss_fn: CCALoss) -> None:
        super().__init__()
        self.net, self.loss_fn = net, loss_fn

    def forward(self, x: torch.Tensor, quality: torch.Tensor, distortion_weight: torch.Tensor, beta: torch.Tensor, checkerboard: bool) -> LossTerms:
        return self.loss_fn(self.net, x, quality, distortion_weight, beta, checkerboard)


class Trainer:
    """Holds everything a training run needs; `state_dict` covers all of it. With a distributed
    `world`, this is one rank's replica (see cca_codec.training.distributed)."""

    def __init__(self, o: TrainOptions, world: World | None = None, resume_from: dict | None = None) -> None:
        """A new run from `o.init`'s weights or a fresh `o.config` network; with `resume_from` (a
        saved state, loaded by :meth:`load_state_dict` afterwards) the network is built from the
        state's own configuration and quality table instead."""
        self.o = o
        self.world = world or World(resolve_device(o.device, any_device=True))
        self.device = self.world.device
        self.bf16 = autocast_bf16(o.precision, self.device)
        self.rows = self.world.shard(o.batch)
        torch.manual_seed(o.seed)
        self.qualities = DEFAULT_QUALITIES
        if resume_from is not None:
            if resume_from.get("qualities"):
                self.qualities = quality_table_from_dicts(resume_from["qualities"])
            self.net = CCAModel(ModelConfig.from_dict(resume_from["config"]), num_qualities=len(self.qualities))
        elif o.init:
            loaded = load_model(o.init, trainable=True)
            if loaded.per_quality:
                raise UsageError(f"--init {o.init}: a model with one network per quality cannot seed a training run")
            self.net, self.qualities = loaded.net.float().train(), loaded.qualities
        else:
            self.net = CCAModel(get_config(o.config), num_qualities=len(self.qualities))
        if not 0 <= o.fp32_synthesis_stages <= len(self.net.g_s.blocks):
            raise UsageError(f"--fp32-synthesis-stages {o.fp32_synthesis_stages}: use 0 to {len(self.net.g_s.blocks)}")
        self.net.g_s.float32_stages = o.fp32_synthesis_stages
        self.aux = AuxEntropyModel(self.net.cfg)
        self.net.to(self.device).train()
        self.aux.to(self.device).train()
        if o.channels_last:
            self.net.to(memory_format=torch.channels_last)
            self.aux.to(memory_format=torch.channels_last)
        self.ema = WeightAverage(self.net, o.ema) if o.ema else None
        self.loss_fn = CCALoss(self.aux, alpha=o.alpha, variant=o.variant)
        objective = Objective(self.net, self.loss_fn)
        main, quantiles = [], []
        for name, p in objective.named_parameters():  # the network's and G's
            (quantiles if name.endswith("quantiles") else main).append(p)
        self.opt = torch.optim.Adam(main, lr=o.lr, foreach=True)
        self.aux_opt = torch.optim.Adam(quantiles, lr=o.aux_lr, foreach=True)
        # the quantiles learn from their own loss in a second backward pass, outside DDP
        self.objective = self.world.wrap(objective, ignore=[n for n, _ in objective.named_parameters() if n.endswith("quantiles")])
        self.world.shard_noise(objective)
        self.gen = torch.Generator().manual_seed(o.seed)
        self.sampler = CropSampler(load_split(o.data, "train").to(self.device), o.crop, self.gen)
        self.step = 0
        self.minutes = 0.0
        self.cpu_seconds = 0.0  # process CPU time (all threads) spent training, over every call
        self.train_qualities = self.quality_choice(o.qualities, o.high_rate_draws)
        table = self.qualities
        self.q_values = torch.tensor([float(q.quality) for q in table])
        self.q_dist = torch.tensor([q.distortion_weight for q in table])
        self.q_beta = torch.tensor([q.beta for q in table])

    def quality_choice(self, text: str, high_rate_draws: int) -> torch.Tensor:
        """Indices into the quality table that each sample's quality is drawn from, uniformly: every
        quality, or the comma-separated integer qualities of `--qualities` (e.g. "4" for one operating
        point), with the HIGH_RATE_QUALITIES highest of them listed `high_rate_draws` times (protocol
        round 4: twice lifts the reconstruction ceiling at the same BD-rate)."""
        known = [q.quality for q in self.qualities]
        if high_rate_draws < 1:
            raise UsageError(f"--high-rate-draws {high_rate_draws}: give 1 (a uniform draw) or more")
        if not text:
            wanted = known
        else:
            try:
                wanted = [int(v) for v in text.split(",")]
            except ValueError:
                raise UsageError(f"--qualities {text!r}: give comma-separated integer qualities, e.g. 3,4") from None
            missing = [q for q in wanted if q not in known]
            if missing:
                raise UsageError(f"--qualities: {missing} not in the quality table {known}")
        top = sorted(set(wanted))[-HIGH_RATE_QUALITIES:]
        return torch.tensor([known.index(q) for q in [*wanted, *top * (high_rate_draws - 1)]])

    def state_dict(self) -> dict:
        return {
            "options": vars(self.o),
            "config": self.net.cfg.to_dict(),
            "net": self.net.state_dict(),
            "aux": self.aux.state_dict(),
            "opt": self.opt.state_dict(),
            "aux_opt": self.aux_opt.state_dict(),
            "gen": self.gen.get_state(),  # every rank's: the ranks share one stream
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else [],
            "step": self.step,
            "minutes": self.minutes,
            "cpu_seconds": self.cpu_seconds,
            "ema": self.ema.state_dict() if self.ema else None,
            "qualities": [q.to_dict() for q in self.qualities],
            "device": self.device_name(),
            "world_size": self.world.size,
        }

    def device_name(self) -> str:
        name = "cpu" if self.device.type == "cpu" else torch.cuda.get_device_name(self.device)
        return self.world.describe(name)

    def fingerprint(self) -> torch.Tensor:
        """Step, weights and generator states in a few numbers, to check that every rank holds
        the state rank 0 saves."""
        with torch.no_grad():
            weights = [torch.stack([p.double().sum() for p in m.parameters()]).sum() for m in (self.net, self.aux)]
        rngs = [self.gen.get_state(), torch.get_rng_state()]
        if self.device.type == "cuda":
            rngs.append(torch.cuda.get_rng_state(self.device))
        crcs = [float(zlib.crc32(r.numpy().tobytes())) for r in rngs]
        return torch.tensor([float(self.step), *[w.item() for w in weights], *crcs], dtype=torch.float64)

    def load_state_dict(self, s: dict) -> None:
        self.net.load_state_dict(s["net"])
        self.aux.load_state_dict(s["aux"])
        self.opt.load_state_dict(s["opt"])
        self.aux_opt.load_state_dict(s["aux_opt"])
        self.gen.set_state(s["gen"].cpu())
        torch.set_rng_state(s["torch_rng"].cpu())
        cuda_rng = s.get("cuda_rng", [])
        if self.device.type == "cuda" and len(cuda_rng):
            # the training device's generator; older states hold a list over the visible devices
            state = cuda_rng if isinstance(cuda_rng, torch.Tensor) else cuda_rng[min(self.device.index or 0, len(cuda_rng) - 1)]
            torch.cuda.set_rng_state(state.cpu(), self.device)
        self.step, self.minutes = s["step"], s["minutes"]
        self.cpu_seconds = s.get("cpu_seconds", 0.0)
        if self.ema is not None:
            self.ema.load_state_dict(s["ema"] if s.get("ema") else self.net.state_dict())

    def train_step(self, minutes_this_run: float = 0.0, cpu_minutes_this_run: float = 0.0) -> dict:
        """One step on the global batch of --batch samples; this rank trains on its rows of it
        (all of them in a single process), and the record holds global-batch means. The minutes
        (wall and process CPU) this call of `run` has spent drive a decay by time."""
        o, rows = self.o, self.rows
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(self.step, o, minutes_this_run, cpu_minutes_this_run)
        x = self.sampler.sample(o.batch, rows)
        if o.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        pick = self.train_qualities[torch.randint(0, len(self.train_qualities), (o.batch,), generator=self.gen)][rows]
        checkerboard = bool(torch.rand(1, generator=self.gen) < o.checkerboard_prob) and self.net.context.spatial is not None
        dev = self.device
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            terms = self.objective(x, self.q_values[pick].to(dev), self.q_dist[pick].to(dev), self.q_beta[pick].to(dev), checkerboard)
        self.opt.zero_grad(set_to_none=True)
        terms.loss.backward()  # under DDP, the gradients arrive averaged over the ranks
        torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], o.clip)
        self.opt.step()
        aux_loss = self.net.aux_loss() + self.aux.factorized.loss()
        self.aux_opt.zero_grad(set_to_none=True)
        aux_loss.backward()
        self.world.average_gradients(p for g in self.aux_opt.param_groups for p in g["params"])
        self.aux_opt.step()
        if self.ema is not None:
            self.ema.update(self.net)
        self.step += 1
        means = [terms.loss, terms.mse, terms.bpp, terms.cca, terms.aux2, terms.aux_bits_per_element, aux_loss]
        loss, mse, bpp, cca, aux2, aux_bits, quantile_loss = self.world.mean(torch.stack([t.detach().float() for t in means])).tolist()
        return {
            "step": self.step,
            "loss": loss,
            "bpp": bpp,
            "mse_psnr": -10 * math.log10(max(mse, 1e-10)),
            "cca": cca,
            "aux2": aux2,
            "aux_bits_per_element": aux_bits,
            "quantile_loss": quantile_loss,
            "lr": self.opt.param_groups[0]["lr"],
            "checkerboard": checkerboard,
        }

    def save(self) -> Path | None:
        """Write the state file (rank 0; every rank takes part in checking that the replicas agree)."""
        if self.world.distributed:
            self.world.check_replicas(self.fingerprint())
        if not self.world.main:
            return None
        out = Path(self.o.out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / (STATE_FILE + ".part")
        torch.save(self.state_dict(), tmp)
        tmp.replace(out / STATE_FILE)
        return out / STATE_FILE

    def export(self, directory: str, model_id: str, info: dict) -> Path:
        """Write a model directory from the moving average of the weights when the run keeps
        one, else from the current weights."""
        weights = self.ema.state_dict() if self.ema is not None else self.net.state_dict()
        return export_weights(self.net.cfg, self.qualities, weights, directory, model_id, info)


def run_info(state: dict, device: str) -> dict:
    """What a model directory records about the training behind it (`model.json` "info")."""
    o = state["options"]
    return {
        "steps": state["step"],
        "minutes": round(state["minutes"], 1),
        "cpu_core_minutes": round(state.get("cpu_seconds", 0.0) / 60, 1),  # process CPU time, all threads
        "device": device,
        "variant": o["variant"],
        "batch": o["batch"],
        "crop": o["crop"],
        "data": o["data"],
        "ema": o.get("ema", 0.0),
    }


def export_state(state_path: str | Path, directory: str | Path, model_id: str) -> Path:
    """Export the weights of a saved training state (its EMA weights when it has them)."""
    s = torch.load(state_path, map_location="cpu", weights_only=False)
    weights = s["ema"] if s.get("ema") else s["net"]
    info = run_info(s, s.get("device", "cpu"))
    return export_weights(ModelConfig.from_dict(s["config"]), quality_table_from_dicts(s["qualities"]), weights, directory, model_id, info)


def run(o: TrainOptions, max_steps: int | None = None) -> Trainer:
    """Train until `steps`, `max_minutes` (wall), `max_cpu_minutes` (process CPU time of all
    threads: a budget that holds on a shared machine) or `max_steps` (this call) is reached, or a
    signal.
    Under torchrun every rank runs this, and all stop at the same step."""
    with launch(o.device) as world:
        state = torch.load(o.resume, map_location="cpu", weights_only=False) if o.resume else None
        trainer = Trainer(o, world, resume_from=state)
        if state is not None:
            trainer.load_state_dict(state)
        _train(trainer, max_steps)
        trainer.save()
        if o.export and world.main:
            trainer.export(o.export, o.export_id or Path(o.export).name, run_info(trainer.state_dict(), trainer.device_name()))
        world.barrier()  # every rank returns once the files are written
    return trainer


def _train(trainer: Trainer, max_steps: int | None) -> None:
    o, world = trainer.o, trainer.world
    stop = {"flag": False}

    def on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
        stop["flag"] = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    start, done_here = time.time(), 0
    base_minutes, base_cpu, cpu_start = trainer.minutes, trainer.cpu_seconds, time.process_time()

    def agree() -> tuple[bool, float, float]:
        """(stop, seconds and CPU seconds of this call), the same on every rank."""
        return world.agree(stop["flag"], time.time() - start, time.process_time() - cpu_start)

    stopping, seconds, cpu_seconds = agree()
    last_save = 0.0
    if world.main:
        Path(o.out).mkdir(parents=True, exist_ok=True)
    try:
        with open(Path(o.out) / LOG_FILE if world.main else os.devnull, "a") as log:
            while not stopping and trainer.step < o.steps:
                if max_steps is not None and done_here >= max_steps:
                    break
                if o.max_minutes and seconds / 60 >= o.max_minutes:
                    break
                if o.max_cpu_minutes and cpu_seconds / 60 >= o.max_cpu_minutes:
                    break
                rec = trainer.train_step(seconds / 60, cpu_seconds / 60)
                done_here += 1
                stopping, seconds, cpu_seconds = agree()
                trainer.minutes = base_minutes + seconds / 60
                trainer.cpu_seconds = base_cpu + cpu_seconds
                if world.main and (trainer.step % o.log_every == 0 or trainer.step == 1):
                    rec["minutes"] = round(trainer.minutes, 2)
                    rec["cpu_seconds"] = round(trainer.cpu_seconds, 1)
                    rec["steps_per_s"] = round(done_here / max(seconds, 1e-9), 3)
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    print(
                        f"step {rec['step']} loss {rec['loss']:.3f} bpp {rec['bpp']:.3f} psnr {rec['mse_psnr']:.2f} "
                        f"cca {rec['cca']:.3f} auxbits {rec['aux_bits_per_element']:.2f} lr {rec['lr']:.2e} "
                        f"{rec['steps_per_s']:.2f} it/s",
                        file=sys.stderr,
                        flush=True,
                    )
                if (o.save_every and trainer.step % o.save_every == 0) or (o.save_minutes and seconds - last_save >= 60 * o.save_minutes):
                    trainer.save()
                    last_save = seconds
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def parse_args(argv: list[str] | None = None, prog: str = "python -m cca_codec.training.train") -> TrainOptions:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainOptions(data="", out="")
    for name, value in vars(defaults).items():
        flag = "--" + name.replace("_", "-")
        if name in ("data", "out"):
            p.add_argument(flag, required=True)
        elif isinstance(value, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=value, help="default: %(default)s")
        elif name == "precision":
            p.add_argument(flag, choices=TRAINING_PRECISIONS, default=value, help="bf16 autocast, or float32; auto (default): bf16 where it is fast")
        elif name == "variant":
            p.add_argument(flag, choices=CCA_VARIANTS, default=value, help="default: %(default)s")
        elif name == "schedule":
            p.add_argument(flag, choices=SCHEDULES, default=value, help="default: %(default)s")
        elif name == "fp32_synthesis_stages":
            p.add_argument(flag, type=int, default=value, help="the last N stages of g_s train in float32 under bf16 autocast (default: %(default)s)")
        elif name == "high_rate_draws":
            p.add_argument(flag, type=int, default=value, help=f"the {HIGH_RATE_QUALITIES} highest qualities of the draw are drawn N times as often as each other one; 1: uniform (default: %(default)s)")
        elif name == "batch":
            p.add_argument(flag, type=int, default=value, help=BATCH_HELP)
        else:
            p.add_argument(flag, type=type(value) if value is not None else str, default=value, help="default: %(default)s")
    p.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="the same as --precision bf16")
    return TrainOptions(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None, prog: str = "python -m cca_codec.training.train") -> None:
    run(parse_args(argv, prog))


if __name__ == "__main__":
    main()
