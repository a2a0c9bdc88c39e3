"""Rate control on Kodak: how close `--target-bpp` / `--target-psnr` land, and how many encodes it costs.

    python benchmarks/rate_control.py ../shared/data/kodak --limit 6 --bpp 0.3,0.6,1.0 --psnr 27,28.5 \
        --threads 2 [--effort 3 [--no-pilot]] --json results/rate_control.json

Every image is coded towards every target with :func:`cca_codec.core.ratecontrol.encode_to_target` (what
``ccacodec encode --target-* [--effort N]`` runs), with the given model and its default context, on the CPU.
The table gives, per target: images that met it within the tolerance, images whose target lies outside
the model's range (coded at the nearest end), the mean and largest absolute deviation of the images
that were in range (relative for bpp, dB for PSNR), the mean PSNR of the chosen files, the mean and largest
number of encodes, and seconds per image.

At an effort above 1 it also gives what refining once would give, the first refined probe (at the quality
the pilot found): how many of those met the target, and their mean PSNR; mean encodes are refined + pilot ones.
``--no-pilot`` searches at the effort from the default quality instead (every probe refined), to compare the two
per second.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from cca_codec.core.checkpoint import load_model
from cca_codec.core.codec import decode_image
from cca_codec.core.ratecontrol import HIGHEST, LOWEST, Target, Trial, encode_to_target
from cca_codec.image.io import load_image
from cca_codec.image.metrics import psnr


def floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part]


def measure(images: list[Path], targets: list[Target], model_name: str | None, effort: int = 1, pilot: bool = True) -> list[dict]:
    """One record per (target, image): status, quality, achieved value, deviation, PSNR, encodes, seconds,
    and (above effort 1) what the first refined probe gave."""
    model = load_model(model_name)
    records = []
    for path in images:
        image = load_image(path)
        for target in targets:
            start = time.perf_counter()
            result = encode_to_target(image, model, target, device="cpu", effort=effort, pilot=pilot)
            seconds = time.perf_counter() - start
            first = result.trials[0]
            records.append({
                "image": path.name, "target": target.kind, "value": target.value, "status": result.status,
                "quality": result.quality, "achieved": result.achieved, "deviation": deviation(target, result.achieved),
                "psnr": decoded_psnr(image, result.trial, model), "encodes": len(result.trials),
                "pilot_encodes": len(result.pilot), "seconds": seconds, "tried": result.to_dict()["tried"],
                "first_refined": {
                    "quality": first.quality, "within": target.within(target.achieved(first)),
                    "deviation": deviation(target, target.achieved(first)), "psnr": decoded_psnr(image, first, model),
                },
            })
            print(f"{path.name} {target.describe()}: {result.message} ({seconds:.1f} s)", file=sys.stderr)
    return records


def deviation(target: Target, achieved: float) -> float:
    """Signed distance from the target: dB for PSNR, relative for rates."""
    return achieved - target.value if target.kind == "psnr" else achieved / target.value - 1


def decoded_psnr(image, trial: Trial, model) -> float:
    """The PSNR of a probe's file: the search's own measurement for PSNR targets, else decoded here."""
    return trial.psnr if trial.psnr is not None else psnr(image.rgb, decode_image(trial.data, model, device="cpu").rgb)


def table(records: list[dict], targets: list[Target], effort: int = 1, pilot: bool = True) -> str:
    """The markdown summary, one row per target (refining once: only after a pilot search)."""
    once_columns = effort > 1 and pilot
    lines = [
        "| target | met (tolerance) | out of range | mean deviation in range | largest deviation in range | mean PSNR "
        "| mean encodes | max encodes | s per image |" + (" refine once: met | refine once: mean PSNR |" if once_columns else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if once_columns else ""),
    ]
    for target in targets:
        rows = [r for r in records if r["target"] == target.kind and r["value"] == target.value]
        out = [r for r in rows if r["status"] in (LOWEST, HIGHEST)]
        inside = [abs(r["deviation"]) for r in rows if r not in out]
        unit = (lambda d: f"{d:.3f} dB") if target.kind == "psnr" else (lambda d: f"{100 * d:.2f} %")
        met = sum(r["status"] == "within_tolerance" for r in rows)
        encodes = [r["encodes"] for r in rows]
        pilots = [r["pilot_encodes"] for r in rows]
        count = (lambda n, p: f"{n:.2f} + {p:.2f}") if once_columns else (lambda n, p: f"{n:.2f}")
        row = (
            f"| {target.describe()} | {met}/{len(rows)} ({target.tolerance}) | {len(out)} "
            f"| {unit(statistics.mean(inside)) if inside else '-'} | {unit(max(inside)) if inside else '-'} "
            f"| {statistics.mean(r['psnr'] for r in rows):.3f} "
            f"| {count(statistics.mean(encodes), statistics.mean(pilots))} | {max(encodes)} "
            f"| {statistics.mean(r['seconds'] for r in rows):.1f} |"
        )
        if once_columns:
            once = [r["first_refined"] for r in rows]
            row += f" {sum(o['within'] for o in once)}/{len(rows)} | {statistics.mean(o['psnr'] for o in once):.3f} |"
        lines.append(row)
    every = [r["encodes"] for r in records]
    lines.append("")
    lines.append(f"All {len(records)} searches: {statistics.mean(every):.2f} encodes at effort {effort} on average"
                 + (f", after {statistics.mean(r['pilot_encodes'] for r in records):.2f} at effort 1." if once_columns else "."))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kodak", type=Path, help="folder of PNG images")
    p.add_argument("--limit", type=int, default=6, help="the first N images (default 6)")
    p.add_argument("--bpp", type=floats, default=[0.3, 0.6, 1.0], help="bpp targets, comma-separated")
    p.add_argument("--psnr", type=floats, default=[27.0, 28.5], help="PSNR targets in dB, comma-separated")
    p.add_argument("--model", help="model id or directory (default: the default model)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--effort", type=int, default=1, help="encoder effort 1..9 (default 1)")
    p.add_argument("--no-pilot", dest="pilot", action="store_false", help="above effort 1: no pilot search at effort 1")
    p.add_argument("--json", type=Path, help="write every record here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    images = sorted(a.kodak.glob("*.png"))[: a.limit]
    targets = [Target("bpp", v) for v in a.bpp] + [Target("psnr", v) for v in a.psnr]
    records = measure(images, targets, a.model, a.effort, a.pilot)
    print(table(records, targets, a.effort, a.pilot))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({
            "images": [p.name for p in images], "effort": a.effort, "pilot": a.pilot, "threads": a.threads, "records": records,
        }, indent=1) + "\n")


if __name__ == "__main__":
    main()
