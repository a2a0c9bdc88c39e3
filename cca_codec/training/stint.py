"""The end of a background stint, measured and written down: the stint's steps and minutes from the
trainer's log, the Kodak check of the exported weights (every quality through `ccacodec eval`, the
reconstruction ceiling, BD-rates against the anchors and the shipped weights), the exported model's
description, and the stint's row in the model's TRAINING.md.

`cca_codec.training.background.finish` runs these steps after stopping the trainer. "CPU minutes"
are minutes of the whole machine (process CPU time / threads), as in the background run.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

from cca_codec.base.fileio import atomic_write
from cca_codec.base.runtime import cpu_info

STINTS_HEADING = "## Background stints"


def cpu_minutes(record: dict, threads: int) -> float:
    """Machine-minutes of CPU (process CPU time / threads) behind a log record."""
    return record.get("cpu_seconds", 0.0) / 60 / threads


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
        f"{row['wall_minutes']} | {recipe} | {row['loss']:.3f} / {row['bpp']:.3f} / {row['psnr']:.2f} | {row['kodak']} | "
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


def recipe_text(args: list[str]) -> str:
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
    """The CPU a stint trained on, for its TRAINING.md row: model name, family and model numbers,
    and its best bf16 instructions ("AMD EPYC (family 25, model 17), AVX512-BF16"). A CPU minute
    buys different numbers of steps on different CPUs, so the learning curve needs it; under a
    hypervisor the model name is often only the brand (AMD EPYC of Zen 4 and of Zen 5 alike, about
    2x apart in steps a minute), which the numbers tell apart. `cpuinfo`: /proc/cpuinfo's text
    (read when None); only its first processor is read."""
    first = cpu_info(cpuinfo)
    name = " ".join(first.get("model name", "").split()) or platform.processor() or platform.machine() or "unknown CPU"
    if first.get("cpu family") and first.get("model"):
        name += f" (family {first['cpu family']}, model {first['model']})"
    flags = set(first.get("flags", "").split())
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
    from cca_codec.image.io import find_images

    return round(autoencoder_ceiling(load_model(model_dir), find_images(kodak, limit)), 3)


def kodak_points(curve: Path) -> str:
    """'bpp @ dB' at qualities 1, 4 and 8 of a Kodak curve, and at its top quality when that is above 8."""
    from cca_codec.measure.bdrate import load_curve

    _, bpp, psnr = load_curve(curve)
    picks = [i for i in (0, 3, 7) if i < len(bpp)] + ([len(bpp) - 1] if len(bpp) > 8 else [])
    return " / ".join(f"{bpp[i]:.3f} @ {psnr[i]:.2f}" for i in picks)


def describe_export(export: Path, summary: dict, gpu_minutes: float, kodak: str, ceiling: float, bd: dict[str, float | None]) -> None:
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


def stint_marks(stints: Path) -> list[int]:
    """The steps at which earlier stints ended, from a run's `stints.jsonl`."""
    try:
        return [json.loads(line)["step"] for line in stints.read_text().splitlines() if line.strip()]
    except OSError:
        return []
