"""Extend the quality table of a trained network above its top quality.

    python -m cca_codec.modeltools.extend models/cca-compact /tmp/q10 --top 10 [--model-id ID]

A quality is an operating point of the loss (`nn.quality.QualityPoint`) plus four gain vectors
(`nn.model.QualityGains`: y, y's inverse, z, z's inverse, stored as logarithms). A new quality
above the top one continues the table's last step: its CompressAI-style lambda grows by the
ratio of the last two qualities' lambdas (keeping the top quality's beta), and each log-gain
continues the per-channel difference between the last two rows, so quality Q+1 quantises y that
much finer than Q as Q does than Q-1. Every other weight, and the gains of qualities 1..Q, are
copied unchanged: the extended network codes qualities 1..Q exactly as before, and the new ones
start where the trend of the trained ones points, for training to refine (the trainer draws
every quality of the table).

The weights' sha256 changes with the table, so `.cca` files written with the original weights
need the original model directory to decode, as after any stint.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from cca_codec.nn.model import CCAModel
from cca_codec.nn.quality import QualityPoint

GAIN_TABLES = ("log_y", "log_y_inv", "log_z", "log_z_inv")


def extended_table(table: Sequence[QualityPoint], top: int) -> tuple[QualityPoint, ...]:
    """The quality table with points Q+1..top appended (Q: its last quality), each with the top
    point's beta and a lambda `r` times its predecessor's, r = lambda(Q) / lambda(Q-1).

    Raises ValueError unless the table is 1..Q (Q >= 2) with a rising lambda and top > Q."""
    qualities = [p.quality for p in table]
    if len(table) < 2 or qualities != list(range(1, len(table) + 1)):
        raise ValueError(f"the quality table must hold qualities 1..Q with Q >= 2, got {qualities}")
    last, before = table[-1], table[-2]
    if top <= last.quality:
        raise ValueError(f"--top {top} must exceed the table's top quality {last.quality}")
    ratio = last.lam / before.lam
    if ratio <= 1.0:
        raise ValueError(f"lambda does not rise from quality {before.quality} to {last.quality}: nothing to continue")
    new = [
        QualityPoint(q, last.beta, last.lam * ratio ** (q - last.quality) * (last.beta + 1.0))
        for q in range(last.quality + 1, top + 1)
    ]
    return (*table, *new)


def extend_gains(net: CCAModel, top: int) -> CCAModel:
    """A copy of `net` with gains for qualities 1..top: rows 1..Q copied, rows above continuing
    the last two rows' per-channel difference (linearly in the logarithm). Every other parameter
    and buffer is copied."""
    have = net.gains.num_qualities
    if have < 2 or top <= have:
        raise ValueError(f"cannot extend {have} qualities to {top}")
    extended = CCAModel(net.cfg, num_qualities=top, trainable=net.trainable)
    state = net.state_dict()
    steps = torch.arange(1, top - have + 1, dtype=torch.float32)[:, None]
    for name in GAIN_TABLES:
        rows = state[f"gains.{name}"]
        step = rows[-1] - rows[-2]
        state[f"gains.{name}"] = torch.cat([rows, rows[-1] + steps.to(rows.dtype) * step])
    extended.load_state_dict(state)
    return extended


def main(argv: Sequence[str] | None = None) -> None:
    from cca_codec.core.checkpoint import export_weights, load_model

    p = argparse.ArgumentParser(prog="python -m cca_codec.modeltools.extend", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model id or directory to extend")
    p.add_argument("out", type=Path, help="model directory to write")
    p.add_argument("--top", type=int, required=True, help="the new top quality (above the model's)")
    p.add_argument("--model-id", default=None, help="id of the written model (default: the folder's name)")
    a = p.parse_args(argv)
    loaded = load_model(a.model, trainable=True)
    if loaded.per_quality:
        sys.exit("error: a model with one network per quality cannot be extended")
    try:
        table = extended_table(loaded.qualities, a.top)
    except ValueError as e:
        sys.exit(f"error: {e}")
    net = extend_gains(loaded.net.float(), a.top)
    info = {**loaded.info, "extended_from": f"{loaded.model_id} (weights sha256 {loaded.weights_sha256.hex()[:12]}, "
            f"qualities 1-{loaded.qualities[-1].quality})"}
    out = export_weights(net.cfg, table, net.state_dict(), a.out, a.model_id or a.out.name, info)
    print(json.dumps({"model": str(out), "qualities": [q.to_dict() for q in table]}, indent=2))


if __name__ == "__main__":
    main()
