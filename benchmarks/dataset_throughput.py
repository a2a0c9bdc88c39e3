"""Throughput of `ccacodec encode-dataset` (Ray Data) against `ccacodec encode --jobs N` on the same images.

Makes COUNT images from the PNGs of a folder (Kodak: each image scaled by --scale, in the eight
flips/rotations, so no two are alike), then times, as whole commands (start-up included):

  ray:   ccacodec encode-dataset SRC DST --num-cpus CPUS -q Q
  jobs:  ccacodec encode SRC/*.png -d DIR --jobs CPUS -q Q --no-overwrite
  one:   ccacodec encode SRC/*.png -d DIR -q Q --threads CPUS        (one process, for reference)

and checks that every command wrote the same bytes for every image. Markdown on stdout, --json FILE
for the figures.

    python benchmarks/dataset_throughput.py ../shared/data/kodak --count 200 --scale 0.5 --work /tmp/dsbench
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

DIHEDRAL = (None, *Image.Transpose)  # identity, then the seven flips and rotations


def make_images(source: Path, out: Path, count: int, scale: float) -> list[Path]:
    """COUNT PNGs in ``out`` from the PNGs of ``source``: each scaled, in turn flipped/rotated."""
    originals = sorted(source.glob("*.png"))
    if not originals:
        raise SystemExit(f"no PNG in {source}")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        with Image.open(originals[index % len(originals)]) as img:
            img = img.convert("RGB")
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
            op = DIHEDRAL[(index // len(originals)) % len(DIHEDRAL)]
            img = img if op is None else img.transpose(op)
            path = out / f"img{index:04d}.png"
            img.save(path)
            paths.append(path)
    return paths


def timed(command: list[str]) -> float:
    """Run ``command`` (ccacodec's messages go to this stderr); its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder of PNGs (e.g. ../shared/data/kodak)")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--scale", type=float, default=0.5, help="scale of each image (0.5: 384x256 from Kodak)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="Ray CPUs, --jobs and --threads")
    parser.add_argument("--quality", type=float, default=4.0)
    parser.add_argument("--work", type=Path, required=True, help="empty folder for the images and outputs")
    parser.add_argument("--skip-one", action="store_true", help="leave out the one-process reference run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    images = make_images(args.source, args.work / "src", args.count, args.scale)
    ccacodec = [sys.executable, "-m", "cca_codec"]
    q = ["-q", str(args.quality)]
    files = [str(p) for p in images]
    runs = {
        "ray": [*ccacodec, "encode-dataset", str(args.work / "src"), str(args.work / "ray"), "--num-cpus", str(args.cpus), *q, "--quiet"],
        "jobs": [*ccacodec, "encode", *files, "-d", str(args.work / "jobs"), "--jobs", str(args.cpus), *q, "--quiet"],
        "one": [*ccacodec, "encode", *files, "-d", str(args.work / "one"), "--threads", str(args.cpus), *q, "--quiet"],
    }
    if args.skip_one:
        del runs["one"]
    seconds = {name: timed(command) for name, command in runs.items()}
    for name in runs:
        for path in images:
            coded = (args.work / name / path.with_suffix(".cca").name).read_bytes()
            if coded != (args.work / "ray" / path.with_suffix(".cca").name).read_bytes():
                raise SystemExit(f"{name} and ray differ on {path.name}")

    with Image.open(images[0]) as first:
        size = f"{first.width}x{first.height}"
    print(f"{args.count} images ({size} and rotations), quality {args.quality:g}, {args.cpus} CPUs; same bytes from every run\n")
    print("| run | command | wall (s) | images/s |")
    print("|---|---|---:|---:|")
    shown = {
        "ray": f"ccacodec encode-dataset SRC DST --num-cpus {args.cpus}",
        "jobs": f"ccacodec encode SRC/*.png -d DIR --jobs {args.cpus}",
        "one": f"ccacodec encode SRC/*.png -d DIR --threads {args.cpus}",
    }
    for name, wall in seconds.items():
        print(f"| {name} | `{shown[name]}` | {wall:.1f} | {args.count / wall:.2f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"count": args.count, "size": size, "cpus": args.cpus, "seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()
