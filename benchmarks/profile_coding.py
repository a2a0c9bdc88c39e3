"""Where encode and decode time goes: by codec stage, by torch operator, and by layer of g_a and g_s.

    python benchmarks/profile_coding.py ../shared/data/kodak/kodim01.png --precision fp32-fast --threads 2
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/profile_coding.py IMAGE   # a CPU without AVX-512

After one untimed warm-up (coding tables, memory layouts, oneDNN primitives), three markdown tables,
each from its own `--repeat` encodes and decodes so that one measurement's overhead does not load
another's figures:

* stages: median milliseconds per codec stage (cca_codec.base.timing), as `ccacodec bench` names them;
* operators: torch.profiler's self CPU milliseconds per call of the direction, per operator, the top `--top`;
* layers: g_a's and g_s's layers grouped by stage and by position within their block (`blocks.0 /
  NAFBlock.dwconv.1` = the depthwise conv of every NAF block of the first stage; `NAFBlock.(own)` =
  the block's work outside its sub-modules: channel attention, gating multiply, the residual
  addcmuls), median milliseconds per call, with multiply-accumulates (torch.utils.flop_counter) and
  GMAC/s where a layer has any.

The first line names the CPU, its instruction sets, torch's CPU capability, oneDNN's ISA limit, the
thread count and the precision, as every speed figure must.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import time
from pathlib import Path

from cca_codec.base.runtime import tune_process

tune_process()  # OpenMP waiting and the C heap as the command line sets them, before torch loads

import torch  # noqa: E402
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from cca_codec.base.timing import StageTimer
from cca_codec.core.checkpoint import load_model
from cca_codec.core.codec import decode_image, encode_image
from cca_codec.core.device import cpu_features, describe_cpu
from cca_codec.core.precision import resolve_precision, transform_context, transform_input
from cca_codec.image.io import load_image


def layer_groups(transform: nn.Module) -> dict[str, str]:
    """Module path -> group name, for the layers of a transform that are timed: the strided convs
    (`down.i`, `up.i`), every block (`blocks.s / NAFBlock`), and each block's leaf modules
    (`blocks.s / NAFBlock.dwconv.1`)."""
    groups = {}
    for name, module in transform.named_modules():
        parts = name.split(".")
        if len(parts) == 2 and parts[0] in ("down", "up"):
            groups[name] = name
        elif len(parts) == 3 and parts[0] == "blocks":
            groups[name] = f"blocks.{parts[1]} / {type(module).__name__}"
        elif len(parts) > 3 and parts[0] == "blocks" and not list(module.children()):
            owner = type(transform.get_submodule(".".join(parts[:3]))).__name__
            groups[name] = f"blocks.{parts[1]} / {owner}.{'.'.join(parts[3:])}"
    return groups


def is_block(group: str) -> bool:
    """Whether a group of `layer_groups` is a whole block (`blocks.s / NAFBlock`), not one of its layers."""
    return " / " in group and "." not in group.split(" / ")[1]


def time_layers(transform: nn.Module, x: torch.Tensor, repeat: int) -> dict[str, float]:
    """Median seconds per call of `transform(x)` spent in each layer group; a block's own work
    (outside its leaf modules) appears as `<block>.(own)`."""
    groups = layer_groups(transform)
    runs: list[dict[str, float]] = []
    starts: dict[str, float] = {}
    totals: dict[str, float] = collections.defaultdict(float)
    handles = []
    for name, module in transform.named_modules():
        if name in groups:
            handles.append(module.register_forward_pre_hook(lambda _m, _i, n=name: starts.__setitem__(n, time.perf_counter())))
            handles.append(module.register_forward_hook(
                lambda _m, _i, _o, n=name: totals.__setitem__(groups[n], totals[groups[n]] + time.perf_counter() - starts.pop(n))))
    try:
        with torch.inference_mode():
            for _ in range(repeat):
                totals.clear()
                transform(x)
                runs.append(dict(totals))
    finally:
        for h in handles:
            h.remove()
    median = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}
    # a block's inclusive time minus its leaves' = what the block's forward does itself
    for block in [g for g in median if is_block(g)]:
        leaves = sum(v for g, v in median.items() if g.startswith(block + "."))
        median[block + ".(own)"] = median.pop(block) - leaves
    return median


def layer_macs(transform: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Multiply-accumulates per layer group of `transform(x)` (FLOPs / 2)."""
    groups = layer_groups(transform)
    prefix = type(transform).__name__ + "."
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        transform(x)
    macs: dict[str, float] = collections.defaultdict(float)
    for name, per_op in counter.get_flop_counts().items():
        path = name[len(prefix):] if name.startswith(prefix) else None
        if path in groups and not is_block(groups[path]):
            macs[groups[path]] += sum(per_op.values()) / 2
    return macs


def environment(precision: str) -> dict:
    """The CPU and the instruction-set settings every figure is quoted with."""
    return {**cpu_features(), "threads": torch.get_num_threads(), "torch": torch.__version__, "precision": precision}


def table(title: str, columns: list[str], rows: list[list[str]]) -> str:
    head = [f"| {title} | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    return "\n".join(head + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", type=Path)
    p.add_argument("-q", "--quality", type=float, default=4)
    p.add_argument("--context", default="checkerboard")
    p.add_argument("--precision", default="auto", help="auto, bf16, fp32-fast or fp32 (cca_codec.core.precision)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--json", type=Path, default=None, help="write every figure here too")
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    cpu = torch.device("cpu")
    model = load_model()
    image = load_image(a.image)
    precision = resolve_precision(a.precision, cpu)
    encode = lambda **kw: encode_image(image, model, quality=a.quality, context=a.context, device="cpu", precision=precision, **kw)
    data = encode()
    decode = lambda **kw: decode_image(data, model, device="cpu", precision=precision, **kw)
    decode()  # with the encode above: the warm-up

    report: dict = {"environment": environment(precision), "image": str(a.image), "quality": a.quality, "context": a.context}
    print(f"CPU: {describe_cpu(report['environment'])}; {a.threads} threads; precision {precision}")

    # stages
    stages: dict[str, dict[str, float]] = {}
    for direction, run in (("encode", encode), ("decode", decode)):
        timers = []
        for _ in range(a.repeat):
            timers.append(StageTimer())
            run(timer=timers[-1])
        stages[direction] = {s: statistics.median(t.seconds.get(s, 0.0) for t in timers) * 1e3 for s in timers[0].seconds}
    report["stages_ms"] = stages
    names = list(dict.fromkeys([*stages["encode"], *stages["decode"]]))
    print("\n" + table("stage (ms)", ["encode", "decode"],
                       [[n, *(f"{stages[d][n]:.1f}" if n in stages[d] else "" for d in ("encode", "decode"))] for n in names]))

    # operators
    report["operators_ms"] = {}
    for direction, run in (("encode", encode), ("decode", decode)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(a.repeat):
                run()
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in ops)
        report["operators_ms"][direction] = {e.key: e.self_cpu_time_total / 1e3 / a.repeat for e in ops}
        print("\n" + table(f"{direction}: operator", ["self ms", "share", "calls"], [
            [e.key, f"{e.self_cpu_time_total / 1e3 / a.repeat:.1f}", f"{e.self_cpu_time_total / total:.0%}", str(e.count // a.repeat)]
            for e in ops[:a.top]
        ]))

    # layers of g_a and g_s, on this image's tensors in this precision's layout and context
    net = model.at_quality(a.quality).net  # its transforms already in the precision's layout (the warm-up)
    x = transform_input(torch.rand(1, 3, image.height // 64 * 64 or 64, image.width // 64 * 64 or 64), precision)
    report["layers"] = {}
    for label, transform, synthesis in (("g_a", net.g_a, False), ("g_s", net.g_s, True)):
        with transform_context(precision, cpu, synthesis=synthesis):
            inp = x if not synthesis else transform_input(torch.randn(1, net.g_s.up[0].in_channels, x.shape[2] // 16, x.shape[3] // 16), precision)
            times = time_layers(transform, inp, a.repeat)
            macs = layer_macs(transform, inp)
        total = sum(times.values())
        rows = []
        for g, s in sorted(times.items(), key=lambda kv: -kv[1]):
            m = macs.get(g, 0.0)
            rows.append([g, f"{s * 1e3:.1f}", f"{s / total:.0%}", f"{m / 1e9:.2f}" if m else "", f"{m / s / 1e9:.1f}" if m and s > 0 else ""])
        report["layers"][label] = {g: {"ms": times[g] * 1e3, "gmac": macs.get(g, 0.0) / 1e9} for g in times}
        print("\n" + table(f"{label} layer ({x.shape[3]}x{x.shape[2]})", ["ms", "share", "GMAC", "GMAC/s"], rows)
              + f"\n\n{label}: {total * 1e3:.0f} ms in its layers, {sum(macs.values()) / 1e9:.1f} GMAC, "
                f"{sum(macs.values()) / total / 1e9:.1f} GMAC/s")
    if a.json:
        a.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
