"""Encode/decode seconds of network configurations on one image, through the real codec.

    python benchmarks/cpu_speed.py ../shared/data/kodak/kodim01.png --configs cca-compact,cca-paper --threads 2

Weights are random (speed does not depend on their values beyond the symbol count), so this
compares configurations before any is trained. Reports the median of --repeats runs after one
warm-up, per configuration and context mode, as a markdown table (and JSON with --json).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from cca_codec.core.checkpoint import in_memory_model
from cca_codec.core.codec import decode_image, encode_image
from cca_codec.image.io import load_image
from cca_codec.nn.config import ModelConfig, get_config

# Candidates that were measured against cca-compact when its widths were chosen.
CANDIDATES = {
    "compact-wider-context": ModelConfig(
        name="compact-wider-context", ae_dims=(64, 96, 128), ae_blocks=(1, 1, 2), latent_channels=192,
        hyper_channels=128, stack_width=96, stack_depth=1, head_widths=(96, 64),
    ),
    "compact-large": ModelConfig(
        name="compact-large", ae_dims=(96, 128, 160), ae_blocks=(1, 2, 2), latent_channels=192,
        hyper_channels=128, stack_width=96, stack_depth=2, head_widths=(96, 64),
    ),
}


def config(name: str) -> ModelConfig:
    return CANDIDATES.get(name) or get_config(name)


def time_config(name: str, image, modes: list[str], repeats: int) -> list[dict]:
    model = in_memory_model(config(name))
    rows = []
    for mode in modes:
        enc, dec = [], []
        for k in range(repeats + 1):
            t = time.perf_counter()
            data = encode_image(image, model, quality=4, context=mode, device="cpu")
            t_enc = time.perf_counter() - t
            t = time.perf_counter()
            decode_image(data, model, device="cpu")
            t_dec = time.perf_counter() - t
            if k:
                enc.append(t_enc)
                dec.append(t_dec)
        rows.append({
            "config": name,
            "parameters": model.net.inference_parameter_count(),
            "mode": mode,
            "encode_s": statistics.median(enc),
            "decode_s": statistics.median(dec),
        })
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image")
    p.add_argument("--configs", default="cca-compact", help=f"comma-separated: {', '.join(CANDIDATES)} or a named configuration")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    image = load_image(a.image)
    rows = []
    for name in a.configs.split(","):
        modes = ["grouped"] + (["checkerboard"] if config(name).spatial_context else [])
        rows += time_config(name, image, modes, a.repeats)
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{image.width}x{image.height}, {a.threads} threads, median of {a.repeats}\n")
    print("| config | parameters | mode | encode s | decode s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['parameters'] / 1e6:.2f} M | {r['mode']} | {r['encode_s']:.2f} | {r['decode_s']:.2f} |")


if __name__ == "__main__":
    main()
