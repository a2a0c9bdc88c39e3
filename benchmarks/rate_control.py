"""Rate control on Kodak: how close `--target-bpp` / `--target-psnr` land, and how many encodes it costs.

    python benchmarks/rate_control.py ../shared/data/kodak --limit 6 --bpp 0.3,0.6,1.0 --psnr 27,28.5 \
        --threads 2 --json results/rate_control.json

Every image is coded towards every target with :func:`cca_codec.ratecontrol.encode_to_target` (what
``ccacodec encode --target-*`` runs), with the given model and its default context, on the CPU. The
table gives, per target: images that met it within the tolerance, images whose target lies outside
the model's range (coded at the nearest end), the mean and largest absolute deviation of the images
that were in range (relative for bpp, dB for PSNR), the mean and largest number of encodes, and seconds per image.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from cca_codec.checkpoint import load_model
from cca_codec.imageio import load_image
from cca_codec.ratecontrol import HIGHEST, LOWEST, Target, encode_to_target


def floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part]


def measure(images: list[Path], targets: list[Target], model_name: str | None) -> list[dict]:
    """One record per (target, image): status, quality, achieved value, deviation, encodes, seconds."""
    model = load_model(model_name)
    records = []
    for path in images:
        image = load_image(path)
        for target in targets:
            start = time.perf_counter()
            result = encode_to_target(image, model, target, device="cpu")
            seconds = time.perf_counter() - start
            deviation = result.achieved - target.value if target.kind == "psnr" else result.achieved / target.value - 1
            records.append({
                "image": path.name, "target": target.kind, "value": target.value, "status": result.status,
                "quality": result.quality, "achieved": result.achieved, "deviation": deviation,
                "encodes": len(result.trials), "seconds": seconds, "tried": result.to_dict()["tried"],
            })
            print(f"{path.name} {target.describe()}: {result.message} ({seconds:.1f} s)", file=sys.stderr)
    return records


def table(records: list[dict], targets: list[Target]) -> str:
    """The markdown summary, one row per target."""
    lines = [
        "| target | met (tolerance) | out of range | mean deviation in range | largest deviation in range "
        "| mean encodes | max encodes | s per image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target in targets:
        rows = [r for r in records if r["target"] == target.kind and r["value"] == target.value]
        out = [r for r in rows if r["status"] in (LOWEST, HIGHEST)]
        inside = [abs(r["deviation"]) for r in rows if r not in out]
        unit = (lambda d: f"{d:.3f} dB") if target.kind == "psnr" else (lambda d: f"{100 * d:.2f} %")
        met = sum(r["status"] == "within_tolerance" for r in rows)
        encodes = [r["encodes"] for r in rows]
        lines.append(
            f"| {target.describe()} | {met}/{len(rows)} ({target.tolerance}) | {len(out)} "
            f"| {unit(statistics.mean(inside)) if inside else '-'} | {unit(max(inside)) if inside else '-'} "
            f"| {statistics.mean(encodes):.2f} | {max(encodes)} | {statistics.mean(r['seconds'] for r in rows):.1f} |"
        )
    every = [r["encodes"] for r in records]
    lines.append("")
    lines.append(f"All {len(records)} searches: {statistics.mean(every):.2f} encodes on average.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kodak", type=Path, help="folder of PNG images")
    p.add_argument("--limit", type=int, default=6, help="the first N images (default 6)")
    p.add_argument("--bpp", type=floats, default=[0.3, 0.6, 1.0], help="bpp targets, comma-separated")
    p.add_argument("--psnr", type=floats, default=[27.0, 28.5], help="PSNR targets in dB, comma-separated")
    p.add_argument("--model", help="model id or directory (default: the default model)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", type=Path, help="write every record here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    images = sorted(a.kodak.glob("*.png"))[: a.limit]
    targets = [Target("bpp", v) for v in a.bpp] + [Target("psnr", v) for v in a.psnr]
    records = measure(images, targets, a.model)
    print(table(records, targets))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"images": [p.name for p in images], "records": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
