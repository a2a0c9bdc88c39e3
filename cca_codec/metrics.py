"""Image quality and rate measures, as the evaluation protocol defines them.

    python -m cca_codec.metrics ORIGINAL DECODED [--cca FILE]

PSNR is computed on 8-bit RGB with MAX = 255; bpp = 8 * file bytes / (W * H) of the original.
"""
from __future__ import annotations

import argparse
import math
import os

import numpy as np
from PIL import Image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 arrays of the same shape (inf when identical)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def bits_per_pixel(num_bytes: int, width: int, height: int) -> float:
    """8 * bytes / (width * height)."""
    return 8.0 * num_bytes / (width * height)


def _rgb(path: str) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cca_codec.metrics", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("original")
    p.add_argument("decoded")
    p.add_argument("--cca", help="the compressed file, for bpp")
    a = p.parse_args(argv)
    ref, out = _rgb(a.original), _rgb(a.decoded)
    line = f"PSNR-RGB {psnr(ref, out):.2f} dB"
    if a.cca:
        line += f", {bits_per_pixel(os.path.getsize(a.cca), ref.shape[1], ref.shape[0]):.3f} bpp"
    print(f"{a.decoded}: {line}")


if __name__ == "__main__":
    main()
