"""Cross-device decoding check: files encoded on the GPU decode on the CPU and the other way round.

    python benchmarks/cross_device.py ../shared/data/kodak --model cca-compact [--limit 24] [--out DIR]

For every image, quality and context mode: encode on cuda and on cpu; decode every file on the
other device and on the CPU with 1 and 2 threads (each in a subprocess, so the thread count is
real). Reports files tried, symbol-exact decodes (the stream's CRC-32 over the decoded symbols
matched: a desync raises instead), the largest pixel difference between reconstructions of the
same file on different devices, and the time of the float64 entropy-parameter path against a
float32 one. Writes cross_device.json and prints a markdown table. Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cca_codec.base.errors import CodecError
from cca_codec.core.checkpoint import load_model
from cca_codec.core.codec import _prepare, _walk_slices, decode_image, encode_image
from cca_codec.image.io import load_image

DECODE_WORKER = """
import json, sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
from cca_codec.core.checkpoint import load_model
from cca_codec.core.codec import decode_image
from cca_codec.base.errors import CodecError
model = load_model(sys.argv[2])
for path in sys.argv[3:]:
    try:
        rgb = decode_image(open(path, "rb").read(), model, device="cpu").rgb
        np.save(path + f".cpu{sys.argv[1]}.npy", rgb)
        print(json.dumps({"file": path, "ok": True}))
    except CodecError as exc:
        print(json.dumps({"file": path, "ok": False, "error": str(exc)}))
"""


def decode_on_cpu(threads: int, model_dir: str, files: list[str]) -> dict[str, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    out = subprocess.run([sys.executable, "-c", DECODE_WORKER, str(threads), model_dir, *files],
                         capture_output=True, text=True, env=env, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {r["file"]: r for r in rows}


def entropy_path_seconds(model, dtype: torch.dtype, device: torch.device, quality: float, shape, repeats: int = 5) -> float:
    """Median time of the entropy-parameter path alone (no coding) in `dtype`."""
    m = copy.deepcopy(model)
    c = _prepare(m, device)
    for module in (c.net.h_mean_s, c.net.h_scale_s, c.net.context):
        module.to(dtype)
    z = torch.zeros(1, c.net.cfg.hyper_channels, shape[0] // 64, shape[1] // 64, device=device, dtype=dtype)
    gz = c.net.gains(torch.tensor([quality], dtype=torch.float64))[3].to(device, dtype)
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode():
            means, scales = c.net.hyper_parameters(z, gz)
            _walk_slices(c, means, scales, True, lambda i, mu, s, pos: torch.round(mu) - mu)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images")
    p.add_argument("--model", default=None)
    p.add_argument("--limit", type=int, default=24)
    p.add_argument("--qualities", default=None, help="comma-separated; default: all")
    p.add_argument("--out", default="cross_device_out")
    p.add_argument("--gpu-device", default="cuda", help="'cpu' runs a dry run of the whole script without a GPU")
    a = p.parse_args(argv)
    gpu = a.gpu_device
    if gpu == "cuda" and not torch.cuda.is_available():
        sys.exit("cross_device.py needs a CUDA GPU (or --gpu-device cpu for a dry run)")
    model = load_model(a.model)
    model_dir = str(model.directory)
    qualities = [float(q) for q in a.qualities.split(",")] if a.qualities else [float(q.quality) for q in model.qualities]
    modes = ["grouped"] + (["checkerboard"] if model.net.context.spatial is not None else [])
    images = sorted(Path(a.images).glob("*.png"))[: a.limit]
    gpu_model, cpu_model = model, copy.deepcopy(model)
    work = Path(tempfile.mkdtemp(prefix="xdev"))
    records = []
    for img_path in images:
        img = load_image(img_path)
        for q in qualities:
            for mode in modes:
                for enc_dev, enc_model in ((gpu, gpu_model), ("cpu", cpu_model)):
                    f = work / f"{img_path.stem}_q{q}_{mode}_{enc_dev}_{len(records)}.cca"
                    f.write_bytes(encode_image(img, enc_model, quality=q, context=mode, device=enc_dev))
                    rec = {"file": str(f), "image": img_path.name, "quality": q, "mode": mode, "encoded_on": enc_dev}
                    try:
                        rec["gpu_rgb"] = decode_image(f.read_bytes(), gpu_model, device=gpu).rgb
                        rec["gpu_ok"] = True
                    except CodecError as exc:
                        rec["gpu_ok"], rec["gpu_error"] = False, str(exc)
                    records.append(rec)
    files = [r["file"] for r in records]
    cpu = {t: decode_on_cpu(t, model_dir, files) for t in (1, 2)}
    max_diff, exact = 0, {"gpu": 0, "cpu1": 0, "cpu2": 0}
    threads_identical = True
    for r in records:
        exact["gpu"] += r["gpu_ok"]
        for t in (1, 2):
            exact[f"cpu{t}"] += cpu[t][r["file"]]["ok"]
        if r["gpu_ok"] and all(cpu[t][r["file"]]["ok"] for t in (1, 2)):
            c1, c2 = (np.load(r["file"] + f".cpu{t}.npy") for t in (1, 2))
            threads_identical &= bool(np.array_equal(c1, c2))
            max_diff = max(max_diff, int(np.abs(c1.astype(int) - r["gpu_rgb"].astype(int)).max()))
    shape = (512, 768)
    timing = {
        f"{dev} {name}": entropy_path_seconds(model, dt, torch.device(dev), qualities[len(qualities) // 2], shape)
        for dev in sorted({"cpu", gpu}) for name, dt in (("float32", torch.float32), ("float64", torch.float64))
    }
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name() if gpu == "cuda" else "cpu (dry run)",
        "model": model.model_id,
        "files": len(records),
        "symbol_exact": exact,
        "desyncs": {k: len(records) - v for k, v in exact.items()},
        "cpu_1_vs_2_threads_pixel_identical": threads_identical,
        "max_pixel_diff_gpu_vs_cpu": max_diff,
        "entropy_path_seconds_768x512": timing,
    }
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "cross_device.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("| files | decoded exactly on GPU | on CPU 1 thread | on CPU 2 threads | max pixel diff GPU vs CPU |")
    print("|---|---|---|---|---|")
    print(f"| {len(records)} | {exact['gpu']} | {exact['cpu1']} | {exact['cpu2']} | {max_diff} |")
    print("\n| entropy-parameter path (768x512) | seconds |\n|---|---|")
    for k, v in timing.items():
        print(f"| {k} | {v:.3f} |")


if __name__ == "__main__":
    main()
