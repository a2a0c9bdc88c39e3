"""The equal-minutes protocol: which training recipe improves the shipped model fastest.

    python benchmarks/train_protocol.py --candidates baseline,lr3e-4 --cpu-minutes 30 --jobs 2 \\
        --out ~/.cache/ccacodec/protocol/r1 [--init models/cca-compact] [--data PACK] [--lossless-data PACK] [--hires-data PACK]

Every candidate is the background run's recipe (the trainer's defaults, `cca_codec.training.train.TrainOptions`)
with one thing changed (`--list` prints them), warm-started from the same weights (`--init`, default: the default
model) with a fresh optimiser and moving average, and trained by `python -m cca_codec.training.train` for
the same budget of process CPU time (`--cpu-minutes`, core-minutes: one thread busy for a minute
is one), so candidates that run side by side (`--jobs 2`, each on `--threads` threads) or beside
other work get equal work. A candidate that is slower per step makes fewer steps: that is the
point. By default the rate stays at the recipe's constant lr; `--decay` makes every candidate decay
it to lr_final over its CPU budget, as a background stint does over its minutes, so that a round
from decayed weights measures what a stint would, not what a warm restart at lr first gives back.
Each exports its moving-average weights, which are then measured the same way:

* Kodak (`--images`, default all 24) through the real codec at qualities 2, 4, 6 and 8,
  checkerboard context, bpp from the `.cca` file sizes, PSNR-RGB per image then averaged;
* the same at every quality above 8 of a candidate whose table is extended (`extend-q9`, `extend-q10`),
  reported beside the others (BD-rates cover qualities 2-8, the range every candidate has);
* the reconstruction ceiling at quality 8, the top every candidate has (`cca_codec.measure.ceiling`:
  g_s(g_a(x)) without quantisation), and the PSNR bought by the step from quality 6 to 8;
* the share of y's estimated bits in each slice at quality 4 (the CCA paper's Figure 2 question:
  does the CCA term move information into the early slices?);
* BD-rate against the first candidate, the starting weights' committed Kodak curve and the JPEG
  anchor.

The table goes to stdout (markdown) and `OUT/protocol.json`; each candidate's run directory
(`OUT/NAME/run`, with `state.pt`) is kept, so the winner can go on as the background run.
`--collect OUT1/baseline OUT2/wide ...` tabulates candidates of several rounds (same budget and
starting weights) against the first one named.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cca_codec.core.checkpoint import load_model, resolve_model_dir
from cca_codec.image.io import load_image
from cca_codec.measure.bdrate import load_curve
from cca_codec.measure.ceiling import autoencoder_ceiling
from cca_codec.measure.evaluate import evaluate
from cca_codec.nn.loss import bits
from cca_codec.training.background import ANCHORS, BD_ANCHORS, KODAK_RESULT, train_root, trainer_environment
from cca_codec.training.stint import bd_rates_of

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "data" / "kodak"
QUALITIES = (2.0, 4.0, 6.0, 8.0)
SHARE_QUALITY = 4.0

@dataclass(frozen=True)
class Candidate:
    """One change to the recipe: trainer flags added after the recipe's, the training pack (a key of
    PACKS), and the stages to widen 2x before training (`cca_codec.modeltools.widen`)."""

    flags: tuple[str, ...] = ()
    pack: str = "jpeg"
    widen: str | None = None
    extend: int | None = None

    def describe(self) -> str:
        parts = [" ".join(self.flags) or "recipe unchanged", f"{self.pack} pack"]
        if self.widen:
            parts.append(f"stages {self.widen} widened 2x")
        if self.extend:
            parts.append(f"quality table extended to {self.extend}")
        return ", ".join(parts)

    def init_command(self, init: Path, out: Path) -> list[str] | None:
        """The command that turns the starting weights `init` into this candidate's, written to
        `out` (a widened network or an extended quality table); None when it starts from `init`."""
        if self.widen:
            return [sys.executable, "-m", "cca_codec.modeltools.widen", str(init), str(out), "--factor", "2", "--stages", self.widen]
        if self.extend:
            return [sys.executable, "-m", "cca_codec.modeltools.extend", str(init), str(out), "--top", str(self.extend)]
        return None


CANDIDATES: dict[str, Candidate] = {
    "baseline": Candidate(),
    "lr3e-4": Candidate(("--lr", "3e-4")),
    "uniform": Candidate(("--high-rate-draws", "1")),  # every quality equally often (the recipe up to round 4)
    "high-rate-3x": Candidate(("--high-rate-draws", "3")),  # the top three qualities three times as often
    "lossless": Candidate(pack="lossless"),
    "hires": Candidate(pack="hires"),  # photos downscaled to a short side of 800-1200 px, not 400-600
    "wide": Candidate(widen="0,1"),  # g_a and g_s at H/2 and H/4 twice as wide
    "wide-h2": Candidate(widen="0"),  # at H/2 only
    "stop-gradient": Candidate(("--variant", "stop_gradient")),
    "alpha0": Candidate(("--alpha", "0")),
    "fp32-tail": Candidate(("--fp32-synthesis-stages", "1")),  # g_s's H/2 stage in float32 under bf16 autocast
    "extend-q9": Candidate(extend=9),  # quality 9 added: the one step round 6's extend-q10 gave 0.4 dB
    "extend-q10": Candidate(extend=10),  # qualities 9 and 10 added (`cca_codec.modeltools.extend`), in the draw's top three
    # 2 x 384x384 per step instead of 4 x 256x256 (1.125x the pixels per step, more context per sample),
    # cut from 416-px pack crops so each keeps the recipe's 32-px room for random placement
    "crop384": Candidate(("--batch", "2", "--crop", "384"), pack="crop416"),
    # with --decay: each stint's warm restart peaks at 3e-5 instead of 1e-4 (still decaying to lr_final), so that
    # a restart from decayed weights gives back less of what the last decay bought
    "peak3e-5": Candidate(("--lr", "3e-5")),
}


# the packs a candidate can train on: the option that names each, and how to build it
PACKS = {
    "jpeg": ("data", "python -m cca_codec.training.data SOURCE PACK"),
    "lossless": ("lossless_data", "python -m cca_codec.training.data SOURCE PACK --lossless"),
    "hires": ("hires_data", "python -m cca_codec.training.data SOURCE PACK --short-side 800,1200"),
    "crop416": ("crop416_data", "python -m cca_codec.training.data SOURCE PACK --crop 416 --short-side 416,600"),
}

DECAY_FLAGS = ("--schedule", "cosine", "--decay-by-time")


def train_command(name: str, init: Path, pack: Path, out: Path, cpu_minutes: float, decay: bool = False) -> list[str]:
    """The trainer's command line for candidate `name`; with `decay`, its learning rate falls from
    the recipe's lr to lr_final over its CPU budget (a cosine), as a stint's does over its minutes."""
    return [
        sys.executable, "-m", "cca_codec.training.train", "--data", str(pack), "--out", str(out / "run"), "--init", str(init),
        *(DECAY_FLAGS if decay else ()), *CANDIDATES[name].flags, "--max-cpu-minutes", str(cpu_minutes),
        "--export", str(out / "model"), "--export-id", f"protocol-{name}",
    ]


def slice_bit_shares(model_dir: Path, images: list[Path], quality: float = SHARE_QUALITY) -> list[float]:
    """Share of y's estimated bits in each slice (training pass, checkerboard context) over the images."""
    model = load_model(model_dir, trainable=True)
    net, sizes = model.net.float().eval(), model.net.cfg.slice_sizes
    totals = np.zeros(len(sizes))
    with torch.no_grad():
        for path in images:
            rgb = torch.from_numpy(load_image(path).rgb).permute(2, 0, 1)[None].float() / 255
            out = net(net.pad_to_alignment(rgb), torch.tensor([quality]), checkerboard=True)
            for i, lk in enumerate(out["likelihoods"]["y"].split(sizes, dim=1)):
                totals[i] += bits(lk).item()
    return [round(float(t / totals.sum()), 4) for t in totals]


def measure(model_dir: Path, images: list[Path]) -> dict:
    """RD at QUALITIES (checkerboard), and as `above` ([quality, bpp, dB] each) at the model's
    qualities above them (an extended table), the ceiling at QUALITIES' top (the gains every
    candidate has, so an extended table's ceiling compares with the others) and the slice bit
    shares. BD-rates use QUALITIES only, the range every candidate covers."""
    model = load_model(model_dir)
    above = [float(p.quality) for p in model.qualities if p.quality > QUALITIES[-1]]
    result = evaluate(images, model, [*QUALITIES, *above], ["checkerboard"], device="cpu", progress=False)["checkerboard"]
    r, n = result["results"], len(QUALITIES)
    return {
        "qualities": r["quality"][:n], "bpp": r["bpp"][:n], "psnr": r["psnr-rgb"][:n],
        "above": [[q, b, db] for q, b, db in zip(r["quality"][n:], r["bpp"][n:], r["psnr-rgb"][n:])],
        "ceiling": round(autoencoder_ceiling(model, images, float(QUALITIES[-1])), 3),
        "last_step_gain": round(r["psnr-rgb"][n - 1] - r["psnr-rgb"][n - 2], 3),
        "slice_bit_shares": slice_bit_shares(model_dir, images),
    }


def run_candidate(name: str, a: argparse.Namespace, images: list[Path]) -> dict:
    """Train candidate `name` (its own process, `a.threads` threads) and measure its export (in a
    process of the same thread count, so measurements of side-by-side candidates do not compete
    for more than their share). Returns its row."""
    candidate, out = CANDIDATES[name], a.out / name
    option, build = PACKS[candidate.pack]
    pack = getattr(a, option)
    if pack is None:
        raise SystemExit(f"{name}: needs --{option.replace('_', '-')} ({build})")
    out.mkdir(parents=True, exist_ok=True)
    env = trainer_environment(a.threads)
    prepared = out / "init"
    prepare = candidate.init_command(a.init, prepared)
    init = prepared if prepare else a.init
    with open(out / "train.log", "w") as log:
        if prepare:
            subprocess.run(prepare, check=True, stdout=log, stderr=log, env=env, cwd=REPO)
        start = time.time()
        subprocess.run(train_command(name, init, pack, out, a.cpu_minutes, a.decay), check=True, stdout=log, stderr=log, env=env, cwd=REPO)
    wall = time.time() - start
    state = torch.load(out / "run" / "state.pt", map_location="cpu", weights_only=False)
    measured = subprocess.run(
        [sys.executable, __file__, "_measure", str(out / "model"), *map(str, images)], capture_output=True, text=True, env=env, cwd=REPO
    )
    if measured.returncode:
        raise RuntimeError(f"{name}: measuring {out / 'model'} failed:\n{measured.stderr[-3000:]}")
    row = {
        "candidate": name, "change": candidate.describe(), "decay": a.decay, "pack": str(pack), "threads": a.threads, "steps": state["step"],
        "cpu_minutes": round(state["cpu_seconds"] / 60, 2), "wall_minutes": round(wall / 60, 1),
        "steps_per_cpu_minute": round(state["step"] / max(state["cpu_seconds"] / 60, 1e-9), 1),
        **json.loads(measured.stdout),
    }
    (out / "result.json").write_text(json.dumps(row, indent=2) + "\n")
    return row


def add_bd_rates(rows: list[dict], init: Path) -> None:
    """BD-rate (%) of every row against the first row, the JPEG anchor and the starting weights'
    committed Kodak curve (every quality, all 24 images; only comparable when --images is all)."""
    references = {"first": (rows[0]["bpp"], rows[0]["psnr"])}
    for key, path in (("jpeg", ANCHORS / BD_ANCHORS[0]), ("init", init / KODAK_RESULT)):
        if path.exists():
            _, bpp, db = load_curve(path)
            references[key] = (bpp, db)
    for row in rows:
        row.update({f"bd_{key}": v for key, v in bd_rates_of(row["bpp"], row["psnr"], references).items()})


def markdown(rows: list[dict]) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.2f}"

    extended = any(r.get("above") for r in rows)  # a column for qualities above 8 only when a candidate has them
    lines = [
        "| candidate | steps | CPU min | steps / CPU min | Kodak q2 / q4 / q6 / q8 bpp @ dB | "
        + ("above q8: q bpp @ dB | " if extended else "")
        + f"ceiling dB | q6->q8 dB | vs {rows[0]['candidate']} | vs start | vs JPEG | y bits per slice % |",
        "|---|---:|---:|---:|---|" + ("---|" if extended else "") + "---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        points = " / ".join(f"{b:.3f} @ {p:.2f}" for b, p in zip(r["bpp"], r["psnr"]))
        above = " / ".join(f"q{q:g} {b:.3f} @ {p:.2f}" for q, b, p in r.get("above", [])) or "-"
        shares = " / ".join(f"{100 * s:.0f}" for s in r["slice_bit_shares"])
        lines.append(
            f"| {r['candidate']} | {r['steps']:,} | {r['cpu_minutes']:.1f} | {r['steps_per_cpu_minute']:.1f} | {points} | "
            + (f"{above} | " if extended else "")
            + f"{r['ceiling']:.2f} | {r['last_step_gain']:+.2f} | {pct(r.get('bd_first'))} | {pct(r.get('bd_init'))} | {pct(r.get('bd_jpeg'))} | {shares} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_measure"]:  # a worker: measure one exported model on the given images
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        print(json.dumps(measure(Path(argv[1]), [Path(p) for p in argv[2:]])))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidates", default="baseline,lr3e-4", help="comma-separated; the first is what the others are compared with")
    p.add_argument("--cpu-minutes", type=float, default=30.0, help="process CPU minutes (all threads) each candidate trains")
    p.add_argument("--decay", action="store_true",
                   help="every candidate decays its learning rate to lr_final over its CPU budget (cosine), as a stint does")
    p.add_argument("--init", default=None, help="weights every candidate starts from (default: the default model)")
    p.add_argument("--data", type=Path, default=train_root() / "pack", help="the JPEG training pack")
    p.add_argument("--lossless-data", type=Path, default=None, help="a lossless pack, for candidate 'lossless'")
    p.add_argument("--hires-data", type=Path, default=None, help="a pack of photos downscaled less, for candidate 'hires'")
    p.add_argument("--crop416-data", type=Path, default=None, help="a pack of 416-px crops, for candidate 'crop384'")
    p.add_argument("--kodak", type=Path, default=KODAK)
    p.add_argument("--images", default=None, help="comma-separated Kodak image names (default: all)")
    p.add_argument("--threads", type=int, default=1, help="threads of each candidate")
    p.add_argument("--jobs", type=int, default=2, help="candidates trained side by side")
    p.add_argument("--out", type=Path, default=None, help="folder for the runs and protocol.json")
    p.add_argument("--list", action="store_true", help="print the candidates and exit")
    p.add_argument("--collect", type=Path, nargs="+", default=None, metavar="DIR",
                   help="no training: tabulate the result.json of these candidate folders (e.g. of several rounds), the first as reference")
    a = p.parse_args(argv)
    if a.list:
        for name, candidate in CANDIDATES.items():
            print(f"{name}: {candidate.describe()}")
        return
    if a.collect:
        rows = [json.loads((d / "result.json").read_text()) for d in a.collect]
        add_bd_rates(rows, resolve_model_dir(a.init))
        print(markdown(rows))
        return
    if a.out is None:
        p.error("--out is required")
    names = a.candidates.split(",")
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        p.error(f"unknown candidates {unknown}; --list shows them")
    a.init = resolve_model_dir(a.init)
    if a.images:
        images = [a.kodak / f"{n}.png" for n in a.images.split(",")]
    else:
        images = sorted(a.kodak.glob("*.png"))
    with ThreadPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(lambda n: run_candidate(n, a, images), names))
    add_bd_rates(rows, a.init)
    print(markdown(rows))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "protocol.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
