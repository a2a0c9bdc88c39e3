"""Large images: peak memory and seconds of a 24-megapixel photo, and the cost of tiling on Kodak.

    CCACODEC_MODELS=models python benchmarks/large_image.py --kodak ../shared/data/kodak --threads 2

1. A 6000 x 4000 photo (a mosaic of Kodak images upscaled 2x with Lanczos) is encoded and
   decoded by the real command line (``python -m cca_codec``) in child processes, each
   timed and measured for peak resident memory (``ru_maxrss`` of that child). Tiling is
   automatic at this size. The promise is a peak under 4 GiB.
2. On ``--overhead-images`` Kodak images, each is coded untiled and with ``--tile`` (default
   256: a 768x512 image becomes 3 x 2 tiles) with the same model and quality; the table gives
   bpp (whole file) and PSNR-RGB of both, and their differences.

Prints a markdown report, and the figures as JSON with ``--json FILE``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

LARGE_SIZE = (6000, 4000)  # width, height: 24 MP
GIB = 1 << 30


def mosaic(kodak: list[Path], size: tuple[int, int]) -> Image.Image:
    """A ``size`` (width, height) RGB photo made of the landscape Kodak images upscaled 2x, row by row."""
    width, height = size
    kodak = [p for p in kodak if Image.open(p).width > Image.open(p).height]
    canvas = Image.new("RGB", size)
    y, i = 0, 0
    while y < height:
        x, row_height = 0, 0
        while x < width:
            with Image.open(kodak[i % len(kodak)]) as img:
                big = img.convert("RGB").resize((img.width * 2, img.height * 2), Image.LANCZOS)
            canvas.paste(big, (x, y))
            x, row_height, i = x + big.width, max(row_height, big.height), i + 1
        y += row_height
    return canvas


def run_measured(args: list[str], threads: int) -> tuple[float, float]:
    """Run ``python -m cca_codec ARGS``; return (seconds, peak RSS in bytes) of that child."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "cca_codec", *args, "--threads", str(threads), "--quiet"], env=env)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"ccacodec {' '.join(args)} failed with exit code {child.returncode}")
    return seconds, usage.ru_maxrss * 1024.0  # Linux reports KiB


def large_image(kodak: list[Path], model: str, quality: float, threads: int, workdir: Path) -> dict:
    """Encode and decode the 24 MP mosaic through the CLI: seconds, peak RSS, bpp, PSNR."""
    src, cca, out = workdir / "large.png", workdir / "large.cca", workdir / "large.out.png"
    mosaic(kodak, LARGE_SIZE).save(src, compress_level=1)
    enc_s, enc_rss = run_measured(["encode", str(src), "-o", str(cca), "--model", model, "-q", str(quality)], threads)
    dec_s, dec_rss = run_measured(["decode", str(cca), "-o", str(out)], threads)
    pixels = LARGE_SIZE[0] * LARGE_SIZE[1]
    return {
        "width": LARGE_SIZE[0], "height": LARGE_SIZE[1], "threads": threads, "quality": quality,
        "encode_seconds": enc_s, "encode_peak_rss_gib": enc_rss / GIB,
        "decode_seconds": dec_s, "decode_peak_rss_gib": dec_rss / GIB,
        "bpp": 8 * cca.stat().st_size / pixels, "psnr": psnr_files(src, out),
    }


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (MAX 255)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def psnr_files(a: Path, b: Path) -> float:
    with Image.open(a) as x, Image.open(b) as y:
        return psnr(np.asarray(x.convert("RGB")), np.asarray(y.convert("RGB")))


def tile_overhead(kodak: list[Path], model_id: str, quality: float, tile: int) -> list[dict]:
    """bpp and PSNR of each image coded untiled and tiled (in-process, same model and quality)."""
    from cca_codec.core.checkpoint import load_model
    from cca_codec.core.codec import decode_image, encode_image
    from cca_codec.image.io import load_image

    model = load_model(model_id)
    rows = []
    for path in kodak:
        image = load_image(path)
        row: dict = {"image": path.name}
        for name, tiles in (("untiled", 0), ("tiled", tile)):
            data = encode_image(image, model, quality=quality, device="cpu", tile=tiles)
            decoded = decode_image(data, model, device="cpu")
            row[f"{name}_bpp"] = 8 * len(data) / (image.width * image.height)
            row[f"{name}_psnr"] = psnr(image.rgb, decoded.rgb)
        rows.append(row)
        print(f"  {path.name}: {row}", file=sys.stderr)
    return rows


def report(large: dict | None, overhead: list[dict], tile: int) -> str:
    lines = []
    if large:
        lines += [
            f"24 MP ({large['width']}x{large['height']}), {large['threads']} threads, quality {large['quality']:g}:",
            f"- encode {large['encode_seconds']:.0f} s, peak RSS {large['encode_peak_rss_gib']:.2f} GiB",
            f"- decode {large['decode_seconds']:.0f} s, peak RSS {large['decode_peak_rss_gib']:.2f} GiB",
            f"- {large['bpp']:.3f} bpp, PSNR {large['psnr']:.2f} dB",
            "",
        ]
    if overhead:
        lines += [f"Tile overhead (--tile {tile} vs untiled):", "",
                  "| image | bpp untiled | bpp tiled | Δ bpp | PSNR untiled | PSNR tiled | Δ PSNR |", "|---|---|---|---|---|---|---|"]
        for r in overhead:
            lines.append(
                f"| {r['image']} | {r['untiled_bpp']:.4f} | {r['tiled_bpp']:.4f} | "
                f"{100 * (r['tiled_bpp'] / r['untiled_bpp'] - 1):+.1f} % | {r['untiled_psnr']:.2f} | "
                f"{r['tiled_psnr']:.2f} | {r['tiled_psnr'] - r['untiled_psnr']:+.2f} dB |"
            )
        mean = lambda key: float(np.mean([r[key] for r in overhead]))  # noqa: E731
        lines.append(
            f"| mean | {mean('untiled_bpp'):.4f} | {mean('tiled_bpp'):.4f} | "
            f"{100 * (mean('tiled_bpp') / mean('untiled_bpp') - 1):+.1f} % | {mean('untiled_psnr'):.2f} | "
            f"{mean('tiled_psnr'):.2f} | {mean('tiled_psnr') - mean('untiled_psnr'):+.2f} dB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kodak", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/kodak")
    parser.add_argument("--model", default="cca-compact")
    parser.add_argument("-q", "--quality", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tile", type=int, default=256, help="tile size for the overhead table")
    parser.add_argument("--overhead-images", type=int, default=4, help="Kodak images in the overhead table (0: skip)")
    parser.add_argument("--skip-large", action="store_true", help="skip the 24 MP run")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    kodak = sorted(args.kodak.glob("kodim*.png"))
    if not kodak:
        raise SystemExit(f"no kodim*.png in {args.kodak}")
    import torch

    torch.set_num_threads(args.threads)
    overhead = tile_overhead(kodak[: args.overhead_images], args.model, args.quality, args.tile)
    large = None
    if not args.skip_large:
        with tempfile.TemporaryDirectory() as tmp:
            large = large_image(kodak, args.model, args.quality, args.threads, Path(tmp))
    print(report(large, overhead, args.tile))
    if args.json:
        args.json.write_text(json.dumps({"large": large, "tile": args.tile, "overhead": overhead}, indent=1))


if __name__ == "__main__":
    main()
