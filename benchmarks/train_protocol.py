"""The training-efficiency protocol: rate-distortion after equal CPU minutes, through the real codec.

    python benchmarks/train_protocol.py --data ~/.cache/ccacodec/train/pack --minutes 25 \
        --candidates baseline-q4,compressai-msh --json results/protocol.json

Every candidate trains from random weights for --minutes of wall time on this machine (2 threads, keep it
otherwise idle: pause the background run with `ccacodec train-bg pause`), Adam at --lr with a 50-step
warm-up and a cosine decay to 1e-5 over the minutes, batch and crop as the candidate says, at one operating
point (quality 4: lambda 0.0179). Then it is evaluated on --images (default kodim01, 05, 09, 13, 17, 21) by
real compression: ccacodec candidates through `encode_image`/`decode_image` at quality 4, checkerboard
context (bpp from the `.cca` bytes); the CompressAI baseline through its own `compress`/`decompress` (bpp
from its strings). For ccacodec candidates it also reports the share of y's bits in each slice (the CCA
paper's Figure 2 question: does the CCA term move information into the early slices?).

Candidates (`--candidates`, comma-separated; `--list` prints them): `baseline-q4` is issue 13's first row
(cca-compact, official CCA loss, fp32, 8 x 128x128, lr 3e-4), `compressai-msh` its second
(`MeanScaleHyperprior(N=128, M=192)`, plain R + lambda*255^2*MSE); the others change one thing at a time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cca_codec.checkpoint import load_model
from cca_codec.codec import decode_image, encode_image
from cca_codec.data import CropSampler, load_split
from cca_codec.imageio import load_image
from cca_codec.metrics import psnr
from cca_codec.nn.loss import bits
from cca_codec.train import TrainOptions, Trainer, learning_rate

KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"
DEFAULT_IMAGES = "kodim01,kodim05,kodim09,kodim13,kodim17,kodim21"
QUALITY = 4
LAMBDA_Q4 = 0.05 / (1.8 + 1)  # quality 4's CompressAI-style lambda

BASE = dict(config="cca-compact", batch=8, crop=128, lr=3e-4, lr_final=1e-5, warmup=50, decay_by_time=True,
            qualities=str(QUALITY), variant="official")
CANDIDATES: dict[str, dict] = {
    "baseline-q4": BASE,
    "compressai-msh": {**BASE, "compressai": True},
    "bf16-cl": {**BASE, "bf16": True, "channels_last": True},
    "bf16-cl-b4x256": {**BASE, "bf16": True, "channels_last": True, "batch": 4, "crop": 256},
    "bf16-cl-stop-gradient": {**BASE, "bf16": True, "channels_last": True, "variant": "stop_gradient"},
    "bf16-cl-alpha0": {**BASE, "bf16": True, "channels_last": True, "alpha": 0.0},
}


def train_ccacodec(spec: dict, data: str, minutes: float, out: Path, seed: int) -> tuple[Path, dict]:
    """Train a ccacodec candidate for `minutes`; returns its exported model directory and run figures."""
    fields = {k: v for k, v in spec.items() if k in TrainOptions.__dataclass_fields__}
    o = TrainOptions(data=data, out=str(out / "run"), max_minutes=minutes, device="cpu", seed=seed, log_every=10**9,
                     save_every=10**9, **fields)
    trainer = Trainer(o)
    start = time.time()
    while (time.time() - start) / 60 < minutes:
        rec = trainer.train_step((time.time() - start) / 60)
    seconds = time.time() - start
    export = trainer.export(str(out / "model"), "protocol", {"steps": trainer.step})
    return export, {"steps": trainer.step, "seconds": seconds, "last_loss": rec["loss"], "aux_bits_per_element": rec["aux_bits_per_element"]}


def train_compressai(spec: dict, data: str, minutes: float, seed: int) -> tuple[torch.nn.Module, dict]:
    """Train CompressAI's MeanScaleHyperprior(128, 192) with R + lambda*255^2*MSE, same data and schedule."""
    from compressai.models import MeanScaleHyperprior

    torch.manual_seed(seed)
    net = MeanScaleHyperprior(N=128, M=192).train()
    o = TrainOptions(data=data, out="", max_minutes=minutes, **{k: v for k, v in spec.items() if k in TrainOptions.__dataclass_fields__})
    main = [p for n, p in net.named_parameters() if not n.endswith("quantiles")]
    quantiles = [p for n, p in net.named_parameters() if n.endswith("quantiles")]
    opt, aux_opt = torch.optim.Adam(main, lr=o.lr), torch.optim.Adam(quantiles, lr=1e-3)
    sampler = CropSampler(load_split(data, "train"), o.crop, torch.Generator().manual_seed(seed))
    start, step = time.time(), 0
    while (time.time() - start) / 60 < minutes:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, o, (time.time() - start) / 60)
        x = sampler.sample(o.batch)
        out = net(x)
        n = x.shape[0] * x.shape[2] * x.shape[3]
        rate = sum(bits(lk).sum() for lk in out["likelihoods"].values()) / n
        loss = rate + LAMBDA_Q4 * 255**2 * (out["x_hat"] - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main, 1.0)
        opt.step()
        aux_opt.zero_grad(set_to_none=True)
        net.aux_loss().backward()
        aux_opt.step()
        step += 1
    net.eval().update(force=True)
    return net, {"steps": step, "seconds": time.time() - start, "last_loss": loss.item()}


def slice_bit_shares(model_dir: Path, images: list[Path]) -> list[float]:
    """Share of y's estimated bits in each slice (checkerboard context, quality 4), over the images."""
    model = load_model(model_dir, trainable=True)  # the training pass's likelihoods
    net, sizes = model.net.float().eval(), model.net.cfg.slice_sizes
    totals = np.zeros(len(sizes))
    with torch.no_grad():
        for path in images:
            rgb = torch.from_numpy(load_image(path).rgb).permute(2, 0, 1)[None].float() / 255
            out = net(rgb, torch.tensor([float(QUALITY)]), checkerboard=True)
            for i, lk in enumerate(out["likelihoods"]["y"].split(sizes, dim=1)):
                totals[i] += bits(lk).item()
    return [round(float(t / totals.sum()), 4) for t in totals]


def evaluate_ccacodec(model_dir: Path, images: list[Path]) -> dict:
    model = load_model(model_dir)
    bpp, db = [], []
    for path in images:
        image = load_image(path)
        data = encode_image(image, model, quality=QUALITY, context="checkerboard", device="cpu")
        decoded = decode_image(data, model, device="cpu")
        bpp.append(8 * len(data) / (image.rgb.shape[0] * image.rgb.shape[1]))
        db.append(psnr(image.rgb, decoded.rgb))
    return {"bpp": statistics.fmean(bpp), "psnr": statistics.fmean(db), "slice_bit_shares": slice_bit_shares(model_dir, images)}


def evaluate_compressai(net: torch.nn.Module, images: list[Path]) -> dict:
    bpp, db = [], []
    with torch.no_grad():
        for path in images:
            image = load_image(path)
            x = torch.from_numpy(image.rgb).permute(2, 0, 1)[None].float() / 255
            h, w = x.shape[-2:]
            ph, pw = -h % 64, -w % 64
            coded = net.compress(torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate"))
            x_hat = net.decompress(coded["strings"], coded["shape"])["x_hat"][..., :h, :w].clamp(0, 1)
            nbytes = sum(len(s) for strings in coded["strings"] for s in strings)
            bpp.append(8 * nbytes / (h * w))
            db.append(psnr(image.rgb, (x_hat[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)))
    return {"bpp": statistics.fmean(bpp), "psnr": statistics.fmean(db)}


def run_candidate(name: str, data: str, minutes: float, images: list[Path], seed: int) -> dict:
    spec = CANDIDATES[name]
    with tempfile.TemporaryDirectory() as tmp:
        if spec.get("compressai"):
            net, fig = train_compressai(spec, data, minutes, seed)
            result = evaluate_compressai(net, images)
        else:
            model_dir, fig = train_ccacodec(spec, data, minutes, Path(tmp), seed)
            result = evaluate_ccacodec(model_dir, images)
    pixels = spec["batch"] * spec["crop"] ** 2
    return {
        "candidate": name, "minutes": minutes, **fig, "steps_per_s": fig["steps"] / fig["seconds"],
        "kpixels_per_s": fig["steps"] * pixels / fig["seconds"] / 1000, **result,
        "spec": {k: v for k, v in spec.items()},
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| candidate | minutes | steps | steps/s | kpixels/s | bpp | PSNR-RGB | y bits per slice |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        shares = " / ".join(f"{100 * s:.0f}" for s in r.get("slice_bit_shares", [])) or "-"
        lines.append(f"| {r['candidate']} | {r['minutes']:g} | {r['steps']:,} | {r['steps_per_s']:.3f} | {r['kpixels_per_s']:.0f} | "
                     f"{r['bpp']:.3f} | {r['psnr']:.2f} | {shares} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="training pack (python -m cca_codec.data)")
    p.add_argument("--candidates", default="baseline-q4,compressai-msh")
    p.add_argument("--minutes", type=float, default=25.0)
    p.add_argument("--kodak", type=Path, default=KODAK)
    p.add_argument("--images", default=DEFAULT_IMAGES, help="comma-separated Kodak image names")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--list", action="store_true", help="print the candidates and exit")
    a = p.parse_args(argv)
    if a.list:
        for name, spec in CANDIDATES.items():
            print(f"{name}: {json.dumps(spec)}")
        return
    if not a.data:
        p.error("--data is required")
    unknown = [c for c in a.candidates.split(",") if c not in CANDIDATES]
    if unknown:
        p.error(f"unknown candidates {unknown}; --list shows them")
    torch.set_num_threads(a.threads)
    images = [a.kodak / f"{n}.png" for n in a.images.split(",")]
    rows = []
    for name in a.candidates.split(","):
        print(f"{name}: training {a.minutes:g} minutes ...", file=sys.stderr, flush=True)
        rows.append(run_candidate(name, a.data, a.minutes, images, a.seed))
        print(markdown(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(markdown(rows))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
