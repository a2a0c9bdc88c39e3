"""Encoder effort on Kodak: BD-rate against effort 1 and encode seconds per image, per effort level.

    python benchmarks/effort.py ../shared/data/kodak --limit 6 --qualities 2,4,6,8 --efforts 1,3,5,7,9 \
        --threads 2 [--crop 384x256] [--device cuda] [--model ID_OR_DIR] --json results/effort.json

Every image is encoded at every quality and effort with :func:`cca_codec.core.codec.encode_image` (what
``ccacodec encode --effort N`` runs), with the given model and its default context, then decoded
by the unchanged decoder (both on the CPU, or both on ``--device``): bpp from the file size, PSNR-RGB per image then averaged (as ``ccacodec eval``).
``--crop WxH`` codes the centre WxH of each image instead of all of it (a cheaper probe; say so when quoting).
The table gives per effort: refinement steps, mean bpp and PSNR per quality, BD-rate against the lowest effort
over the qualities, and the median encode seconds per image (per quality, the median over images).

With ``--json FILE`` the file is rewritten after every encoding, and the records it already holds (same crop,
same weights: the file records their sha256) are kept and not measured again: a long sweep can be stopped,
resumed, or extended by more efforts later, also after the default model has changed (``--model`` names the
weights the file was made with); the table covers every effort in the file.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cca_codec.core.checkpoint import LoadedModel, load_model
from cca_codec.core.codec import decode_image, encode_image
from cca_codec.core.refine import EFFORT_STEPS
from cca_codec.image.io import SourceImage, load_image
from cca_codec.image.metrics import bits_per_pixel, psnr
from cca_codec.measure.bdrate import bd_rate
from cca_codec.image.io import find_images


def centre_crop(image: SourceImage, size: tuple[int, int] | None) -> SourceImage:
    """The centre ``size`` (width, height) of ``image`` (all of it when None or larger)."""
    if size is None:
        return image
    width, height = min(size[0], image.width), min(size[1], image.height)
    top, left = (image.height - height) // 2, (image.width - width) // 2
    rgb = np.ascontiguousarray(image.rgb[top : top + height, left : left + width])
    return SourceImage(rgb=rgb, color_mode="rgb", bit_depth=8)


def measure(
    images: list[Path], qualities: list[float], efforts: list[int], crop: tuple[int, int] | None,
    records: list[dict], say, saved, model: LoadedModel, device: str = "cpu",
) -> list[dict]:
    """Add to ``records`` one record per (image, quality, effort) it lacks: bpp, PSNR, encode seconds;
    ``saved(records)`` after each."""
    done = {(r["image"], r["quality"], r["effort"]) for r in records}
    for path in images:
        image = centre_crop(load_image(path), crop)
        for q in qualities:
            for effort in efforts:
                if (path.name, q, effort) in done:
                    continue
                start = time.perf_counter()
                data = encode_image(image, model, quality=q, device=device, effort=effort)
                if device == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                decoded = decode_image(data, model, device=device)
                record = {
                    "image": path.name, "quality": q, "effort": effort, "bytes": len(data),
                    "bpp": bits_per_pixel(len(data), image.width, image.height), "psnr": psnr(image.rgb, decoded.rgb),
                    "encode_s": seconds,
                }
                records.append(record)
                saved(records)
                say(f"{path.name} q{q:g} effort {effort}: {record['bpp']:.4f} bpp, {record['psnr']:.3f} dB, {seconds:.1f} s")
    return records


def summarize(records: list[dict], qualities: list[float]) -> list[dict]:
    """Per effort in ``records``: the mean curve over the images every effort has at every quality, its BD-rate
    against the lowest effort, and the median encode seconds."""
    efforts = sorted({r["effort"] for r in records})
    have = {(r["image"], r["quality"], r["effort"]) for r in records}
    complete = [
        name for name in dict.fromkeys(r["image"] for r in records)
        if all((name, q, e) in have for e in efforts for q in qualities)
    ]
    records = [r for r in records if r["image"] in complete]

    def curve(effort: int) -> tuple[list[float], list[float]]:
        rows = [[r for r in records if r["effort"] == effort and r["quality"] == q] for q in qualities]
        return [statistics.fmean(r["bpp"] for r in row) for row in rows], [statistics.fmean(r["psnr"] for r in row) for row in rows]

    base = curve(efforts[0])
    table = []
    for effort in efforts:
        bpp, db = curve(effort)
        seconds = statistics.median(r["encode_s"] for r in records if r["effort"] == effort)
        table.append({
            "effort": effort, "steps": EFFORT_STEPS[effort], "images": len(complete), "bpp": bpp, "psnr": db,
            "bd_rate_vs_first": 0.0 if effort == efforts[0] else bd_rate(*base, bpp, db), "encode_s_median": seconds,
        })
    return table


def markdown(table: list[dict], qualities: list[float]) -> str:
    head = "| effort | steps | " + " | ".join(f"q{q:g} bpp / dB" for q in qualities) + f" | BD-rate vs effort {table[0]['effort']} | encode s / image |"
    lines = [head, "|---:|---:|" + "---:|" * len(qualities) + "---:|---:|"]
    for row in table:
        points = " | ".join(f"{b:.4f} / {p:.2f}" for b, p in zip(row["bpp"], row["psnr"]))
        lines.append(f"| {row['effort']} | {row['steps']} | {points} | {row['bd_rate_vs_first']:+.2f} % | {row['encode_s_median']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", type=Path)
    p.add_argument("--limit", type=int, default=6)
    p.add_argument("--qualities", default="2,4,6,8")
    p.add_argument("--efforts", default="1,3,5,7,9", help="comma-separated efforts to measure; the lowest in the results is the reference")
    p.add_argument("--crop", default=None, metavar="WxH", help="code the centre WxH of each image")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--model", default=None, help="model id or directory (default: the default model)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    qualities = [float(q) for q in args.qualities.split(",")]
    efforts = [int(e) for e in args.efforts.split(",")]
    crop = tuple(int(v) for v in args.crop.lower().split("x")) if args.crop else None
    images = find_images(args.directory, args.limit)
    model = load_model(args.model)
    weights = model.weights_sha256.hex()
    records: list[dict] = []
    if args.json is not None and args.json.exists():
        earlier = json.loads(args.json.read_text())
        if earlier.get("crop") != args.crop:
            sys.exit(f"{args.json} holds records for crop {earlier.get('crop')}, not {args.crop}")
        if earlier.get("weights_sha256", weights) != weights:
            sys.exit(f"{args.json} was made with weights {earlier['weights_sha256'][:12]}, not {weights[:12]}: pass their --model")
        records = earlier["records"]

    def saved(records: list[dict], table: list[dict] | None = None) -> None:
        if args.json is None:
            return
        args.json.parent.mkdir(parents=True, exist_ok=True)
        names = list(dict.fromkeys(r["image"] for r in records))
        partial = args.json.with_name(args.json.name + ".partial")
        partial.write_text(json.dumps({
            "images": names, "crop": args.crop, "threads": args.threads, "device": args.device, "model": model.model_id,
            "weights_sha256": weights, "table": table, "records": records,
        }, indent=2) + "\n")
        partial.replace(args.json)

    measure(images, qualities, efforts, crop, records, lambda line: print(line, file=sys.stderr, flush=True), saved, model, args.device)
    table = summarize(records, qualities)
    print(markdown(table, qualities))
    saved(records, table)


if __name__ == "__main__":
    main()
