"""Speed benchmark: per-stage timing of encode and decode, beside classical codecs on the same image.

    ccacodec bench [IMAGE|DIR ...] [--model ID|DIR] [-q Q] [--context MODE] [--device auto|cpu|cuda]
        [--threads 1,2] [--precision auto,bf16,fp32-fast,fp32] [--repeat N] [--compare jpeg,webp,cwebp,jxl,avif] [--json FILE]

IMAGE defaults to the bundled samples/seeding.png; several images, or a folder (its image files,
sorted, as ``ccacodec eval`` reads them), are timed one after another and reported as medians over
the images. One *run* per CPU thread count (``--threads``)
and, when a GPU is present (``--device auto|cuda``), one on CUDA, each once per transform
precision (``--precision``, cca_codec.core.precision; default auto, the CLI's default; the report names the CPU, the instruction sets it offers and the limits set on them: cca_codec.core.device.cpu_features). A run does one untimed
warm-up round on the first image (moving the network to the device, building the coding
tables), then ``--repeat`` timed rounds per image of the file-to-file path a user sees:

* encode: read and convert the image, the codec's stages (cca_codec.base.timing), write the ``.cca``;
* decode: read the ``.cca``, the codec's stages, write the PNG.

Every stage is the median over the rounds in seconds (CUDA work synchronised at each stage
boundary), then the median of those over the images; ``other`` is what no stage covers
(padding, tensor conversion, checks). Speed in megapixels per second = W * H / 10^6 / median
total, per image, then its median over the images; bpp and PSNR are means over the images. Peak memory: the process's peak resident
set during the run (``VmHWM``, reset before the run where Linux allows, else the peak of the
whole process) and, on CUDA, ``torch.cuda.max_memory_allocated``. Model load time is that of
``load_model`` (reading and checking the weights).

The classical codecs (``--compare``, cca_codec.measure.classical) code the same pixels at their
benchmark setting, timed the same way (median of ``--repeat`` after a warm-up, per image, then over the images;
command-line tools including their process start, with each tool's default threading), and the table
prints how many times slower ccacodec is in each run. Markdown goes to stdout, progress to
stderr, everything to ``--json FILE``.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cca_codec import __version__
from cca_codec.base.console import say
from cca_codec.base.errors import UsageError
from cca_codec.base.fileio import atomic_write, read_file
from cca_codec.base.timing import (
    CONTAINER_READ,
    CONTAINER_WRITE,
    IMAGE_READ,
    IMAGE_WRITE,
    StageTimer,
    is_entropy_step,
    pipeline_order,
)
from cca_codec.core.checkpoint import LoadedModel, load_model
from cca_codec.core.codec import decode_image, default_context, encode_image, resolve_device
from cca_codec.core.device import cpu_features, describe_cpu
from cca_codec.core.precision import resolve_precision
from cca_codec.image.io import DecodedImage, SourceImage, load_image, save_image
from cca_codec.image.metrics import bits_per_pixel, psnr

from . import classical
from cca_codec.image.io import find_images, output_rgb

DEFAULT_IMAGE = Path(__file__).resolve().parents[2] / "samples" / "seeding.png"
"""The bundled sample image (present in a source checkout)."""

OTHER = "other"
MIB = 1 << 20


@dataclass(frozen=True)
class RunSpec:
    """Where one run executes: a device and, on the CPU, a thread count; how its transforms run."""

    device: torch.device
    threads: int | None
    precision: str = "auto"

    @property
    def label(self) -> str:
        where = "cuda" if self.device.type == "cuda" else f"cpu, {self.threads} thread{'s' if self.threads != 1 else ''}"
        return where if self.precision == "auto" else f"{where}, {self.precision}"


@dataclass
class _Round:
    """One timed encode and decode: stage timers and wall totals (s), and what came out."""

    encode: StageTimer
    encode_s: float
    decode: StageTimer
    decode_s: float
    image: SourceImage
    file_bytes: int
    decoded: DecodedImage


def _one_round(image_path: Path, model: LoadedModel, quality: float, context: str, spec: RunSpec, folder: Path) -> _Round:
    """Encode ``image_path`` into ``folder/bench.cca`` and decode that into ``folder/bench.png``."""
    device, precision = spec.device, spec.precision
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    cca_path, png_path = folder / "bench.cca", folder / "bench.png"
    enc = StageTimer(sync)
    start = time.perf_counter()
    with enc.stage(IMAGE_READ):
        image = load_image(image_path)
    data = encode_image(image, model, quality=quality, context=context, device=device.type, precision=precision, timer=enc)
    with enc.stage(CONTAINER_WRITE):
        atomic_write(cca_path, data)
    encode_s = time.perf_counter() - start
    dec = StageTimer(sync)
    start = time.perf_counter()
    with dec.stage(CONTAINER_READ):
        stored = read_file(cca_path)
    decoded = decode_image(stored, model, device=device.type, precision=precision, timer=dec)
    with dec.stage(IMAGE_WRITE):
        save_image(decoded, str(png_path), threads=torch.get_num_threads())
    decode_s = time.perf_counter() - start
    return _Round(enc, encode_s, dec, decode_s, image, len(data), decoded)


def _median_stages(timers: list[StageTimer], totals: list[float], megapixels: float) -> dict:
    """Median seconds of every stage, of ``other`` and of the total over the rounds; MP/s."""
    stages = {name: statistics.median(t.seconds.get(name, 0.0) for t in timers) for name in timers[0].seconds}
    other = statistics.median(total - sum(t.seconds.values()) for t, total in zip(timers, totals))
    total = statistics.median(totals)
    return {"stages": stages, "other_s": other, "total_s": total, "megapixels_per_s": megapixels / total}


def _median_over_images(per_image: list[dict]) -> dict:
    """The median over images of each entry of their `_median_stages` results."""
    names = {name for m in per_image for name in m["stages"]}
    return {
        "stages": {name: statistics.median(m["stages"].get(name, 0.0) for m in per_image) for name in names},
        **{key: statistics.median(m[key] for m in per_image) for key in ("other_s", "total_s", "megapixels_per_s")},
    }


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    """Peak resident set of this process in MiB (VmHWM, else getrusage's ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def measure_run(images: Sequence[Path], model: LoadedModel, quality: float, context: str, spec: RunSpec, repeat: int) -> dict:
    """Time ``repeat`` rounds per image (after one warm-up on the first) on ``spec``; see the
    module docstring for the measures.

    Returns ``{"label", "device", "threads", "precision" (the one used), "warm_up_s", "encode": {"stages": {name: s},
    "other_s", "total_s", "megapixels_per_s"}, "decode": {...}, "peak_rss_mib", "peak_rss_scope"
    ("run" or "process"), "cuda_peak_mib" (None on the CPU), "bpp", "psnr_rgb"}``.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads or previous_threads)
    try:
        with tempfile.TemporaryDirectory(prefix="cca-bench-") as tmp:
            start = time.perf_counter()
            _one_round(images[0], model, quality, context, spec, Path(tmp))
            warm_up_s = time.perf_counter() - start
            scope = "run" if _reset_peak_rss() else "process"
            if spec.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            rounds = [[_one_round(path, model, quality, context, spec, Path(tmp)) for _ in range(repeat)] for path in images]
    finally:
        torch.set_num_threads(previous_threads)

    def per_image(direction: str) -> list[dict]:
        return [
            _median_stages(
                [getattr(r, direction) for r in image_rounds],
                [getattr(r, f"{direction}_s") for r in image_rounds],
                image_rounds[-1].image.width * image_rounds[-1].image.height / 1e6,
            )
            for image_rounds in rounds
        ]

    lasts = [image_rounds[-1] for image_rounds in rounds]
    return {
        "label": spec.label,
        "device": spec.device.type,
        "threads": spec.threads,
        "precision": resolve_precision(spec.precision, spec.device),
        "warm_up_s": warm_up_s,
        "encode": _median_over_images(per_image("encode")),
        "decode": _median_over_images(per_image("decode")),
        "peak_rss_mib": _peak_rss_mib(),
        "peak_rss_scope": scope,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / MIB if spec.device.type == "cuda" else None,
        "bpp": statistics.fmean(bits_per_pixel(r.file_bytes, r.image.width, r.image.height) for r in lasts),
        "psnr_rgb": statistics.fmean(psnr(r.image.rgb, output_rgb(r.decoded)) for r in lasts),
    }


def measure_classical(codec: classical.ClassicalCodec, images: Sequence[SourceImage], repeat: int, runs: list[dict]) -> dict:
    """Time ``codec`` at its benchmark setting (median of ``repeat`` after a warm-up per image,
    then the median over the images), with the ratio ccacodec time / codec time for each of our
    ``runs``; bpp and PSNR are means over the images."""
    encode, decode, bpp, quality = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="cca-bench-") as tmp:
        for image in images:
            source = classical.write_source_png(image.rgb, Path(tmp) / "source.png")
            out = Path(tmp) / f"bench{codec.suffix}"
            coded = [codec.run(source, codec.bench_quality, out) for _ in range(repeat + 1)][1:]
            encode.append(statistics.median(c.encoding_time for c in coded))
            decode.append(statistics.median(c.decoding_time for c in coded))
            bpp.append(bits_per_pixel(coded[-1].file_bytes, image.width, image.height))
            quality.append(psnr(image.rgb, coded[-1].rgb))
    encode_s, decode_s = statistics.median(encode), statistics.median(decode)
    return {
        "key": codec.key,
        "name": codec.name,
        "version": codec.version(),
        "setting": f"{codec.setting} = {codec.bench_quality:g}",
        "bpp": statistics.fmean(bpp),
        "psnr_rgb": statistics.fmean(quality),
        "encode_s": encode_s,
        "decode_s": decode_s,
        "slower": {
            run["label"]: {"encode": run["encode"]["total_s"] / encode_s, "decode": run["decode"]["total_s"] / decode_s}
            for run in runs
        },
    }


def run_specs(device: str, threads: Sequence[int], precisions: Sequence[str] = ("auto",)) -> list[RunSpec]:
    """CPU runs with each thread count (unless ``device`` is cuda), and a CUDA run when one is
    asked for or (``auto``) available, each with every precision. UsageError: cuda asked for
    without a GPU, or a precision the device cannot run."""
    if device == "cuda":
        places = [(resolve_device("cuda"), None)]
    else:
        places = [(torch.device("cpu"), n) for n in threads]
        if device == "auto" and torch.cuda.is_available():
            places.append((torch.device("cuda"), None))
    for where, _ in places:
        for precision in precisions:
            resolve_precision(precision, where)
    return [RunSpec(where, n, precision) for where, n in places for precision in precisions]


def image_paths(arguments: Sequence[Path]) -> list[Path]:
    """The images named on the command line: files as given, folders as their image files
    (`image.io.find_images`, the folders `ccacodec eval` reads). UsageError when a path is missing
    or a folder has none."""
    paths: list[Path] = []
    for arg in arguments:
        if arg.is_dir():
            paths += find_images(arg)
        elif arg.is_file():
            paths.append(arg)
        else:
            raise UsageError(f"no such image or folder: {arg}")
    return paths


def bench(
    images: Sequence[Path],
    model_ref: str | None,
    quality: float | None,
    context: str | None,
    specs: Sequence[RunSpec],
    repeat: int,
    codecs: Sequence[classical.ClassicalCodec],
    say: Callable[[str], None] = say,
    label: str | None = None,
) -> dict:
    """Run the whole benchmark on ``images`` (``label`` names them in the report: default the
    single image's path, or the count); returns the JSON document (see :func:`measure_run`,
    :func:`measure_classical`). A classical codec that fails is skipped with a message."""
    if repeat < 1:
        raise UsageError("--repeat must be at least 1")
    if not images:
        raise UsageError("no image to time")
    sources = [load_image(path) for path in images]
    start = time.perf_counter()
    model = load_model(model_ref)
    model_load_s = time.perf_counter() - start
    q = model.check_quality(model.default_quality if quality is None else quality)
    mode = context or default_context(model)
    runs = []
    for spec in specs:
        say(f"timing ccacodec, {spec.label} ...")
        runs.append(measure_run(images, model, q, mode, spec, repeat))
    compared, skipped = [], []
    for codec in codecs:
        say(f"timing {codec.key} ...")
        try:
            compared.append(measure_classical(codec, sources, repeat, runs))
        except classical.ToolFailure as exc:
            skipped.append(f"{codec.key}: {exc}")
            say(f"{codec.key} skipped: {exc}")
    sizes = {(s.width, s.height) for s in sources}
    return {
        "image": label or (str(images[0]) if len(images) == 1 else f"{len(images)} images"),
        "images": [str(path) for path in images],
        "width": sources[0].width if len(sizes) == 1 else None,
        "height": sources[0].height if len(sizes) == 1 else None,
        "megapixels": statistics.fmean(s.width * s.height / 1e6 for s in sources),
        "model": model.model_id,
        "quality": q,
        "context": mode,
        "repeat": repeat,
        "model_load_s": model_load_s,
        "runs": runs,
        "classical": compared,
        "skipped": skipped,
        "environment": _environment(),
    }


def _environment() -> dict:
    """What the timings depend on: versions, the CPU and its usable instruction sets
    (cca_codec.core.device.cpu_features), CPU count, GPU name."""
    return {
        **cpu_features(),
        "ccacodec": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def _stage_table(runs: list[dict], direction: str) -> list[str]:
    """Rows: the stages of ``direction`` (encode/decode) in pipeline order, the entropy steps'
    sum, other and total, in ms; a column per run."""
    names = sorted({name for run in runs for name in run[direction]["stages"]}, key=pipeline_order)
    lines = [f"| {direction} stage (ms) | " + " | ".join(r["label"] for r in runs) + " |"]
    lines.append("|---|" + "---:|" * len(runs))
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_ms(r[direction]["stages"].get(name, 0.0)) for r in runs) + " |")
    steps = [sum(s for name, s in r[direction]["stages"].items() if is_entropy_step(name)) for r in runs]
    lines.append("| entropy parameters, all steps | " + " | ".join(_ms(s) for s in steps) + " |")
    lines.append(f"| {OTHER} | " + " | ".join(_ms(r[direction]["other_s"]) for r in runs) + " |")
    lines.append("| **total** | " + " | ".join(f"**{_ms(r[direction]['total_s'])}**" for r in runs) + " |")
    return lines


def markdown(report: dict) -> str:
    """The report as markdown: a summary per run, encode and decode stages, classical codecs."""
    runs = report["runs"]
    count = len(report["images"])
    size = f"{report['width']}x{report['height']}" if report["width"] else "mixed sizes"
    over = f"median of {report['repeat']} per image after a warm-up, then over the {count} images" if count > 1 else f"median of {report['repeat']} after a warm-up"
    mean = "mean " if count > 1 else ""
    lines = [
        f"{report['image']}: {size} ({report['megapixels']:.2f} MP{' on average' if count > 1 else ''}); model "
        f"{report['model']}, quality {report['quality']:g}, {report['context']}: {mean}{runs[0]['bpp']:.3f} bpp, "
        f"{runs[0]['psnr_rgb']:.2f} dB; {over}; model load {report['model_load_s']:.2f} s",
        "",
        f"CPU: {describe_cpu(report['environment'])}",
        "",
        "| run | encode (s) | decode (s) | encode MP/s | decode MP/s | warm-up round (s) | peak RSS (MiB) | peak CUDA (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        cuda = "" if r["cuda_peak_mib"] is None else f"{r['cuda_peak_mib']:.0f}"
        rss = f"{r['peak_rss_mib']:.0f}" + ("" if r["peak_rss_scope"] == "run" else " (process)")
        lines.append(
            f"| {r['label']} | {r['encode']['total_s']:.3f} | {r['decode']['total_s']:.3f} | "
            f"{r['encode']['megapixels_per_s']:.3f} | {r['decode']['megapixels_per_s']:.3f} | "
            f"{r['warm_up_s']:.2f} | {rss} | {cuda} |"
        )
    lines += ["", *_stage_table(runs, "encode"), "", *_stage_table(runs, "decode")]
    if report["classical"]:
        lines += [
            "",
            "| codec | setting | bpp | PSNR-RGB (dB) | encode (ms) | decode (ms) | "
            + " | ".join(f"ccacodec {r['label']}: times slower (enc / dec)" for r in runs) + " |",
            "|---|---|---:|---:|---:|---:|" + "---:|" * len(runs),
        ]
        for c in report["classical"]:
            ratios = " | ".join(
                f"{c['slower'][r['label']]['encode']:.0f}x / {c['slower'][r['label']]['decode']:.0f}x" for r in runs
            )
            lines.append(
                f"| {c['key']} ({c['version']}) | {c['setting']} | {c['bpp']:.3f} | {c['psnr_rgb']:.2f} | "
                f"{_ms(c['encode_s'])} | {_ms(c['decode_s'])} | {ratios} |"
            )
    return "\n".join(lines)
