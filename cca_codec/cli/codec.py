"""``ccacodec encode``, ``decode`` and ``info``: files one by one, or in child processes (``--jobs``).

The work of each file is :func:`cca_codec.core.files.encode_file` / ``decode_file``; the batch
(output names, the child processes) is :mod:`cca_codec.core.batch`. Here: the options, the
progress bars, and what is printed.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import click
from tqdm import tqdm

from cca_codec.base.errors import CodecError, UsageError
from cca_codec.base.fileio import STDOUT, read_input
from cca_codec.base.runtime import set_torch_threads
from cca_codec.core import batch
from cca_codec.format.container import describe, read_container

from .common import (
    EXIT_OK,
    PROG,
    context_option,
    device_option,
    effort_option,
    in_label,
    jobs_option,
    max_pixels_option,
    model_option,
    no_overwrite_option,
    out_label,
    output_dir_option,
    output_option,
    precision_option,
    quality_option,
    quiet_option,
    report,
    say,
    threads_option,
    torch_modules,
)

# ------------------------------------------------------------------------------ batches


def plan_jobs(inputs: Sequence[str], output: str | None, out_dir: str | None, suffix: str) -> list[batch.Job]:
    """:func:`cca_codec.core.batch.plan_jobs`, its option errors as Click's usage errors."""
    try:
        return batch.plan_jobs(inputs, output, out_dir, suffix)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None


def run_jobs(jobs: list[batch.Job], work: Callable[[str, str], None], quiet: bool, processes: int = 1) -> int:
    """Run ``work(src, dst)`` for every job; return the exit code of the first failure, or 0.

    A failing file is reported and the next one is processed; a ``UsageError`` (an option
    that cannot work for any file) and ``KeyboardInterrupt`` stop the run. With several
    inputs, a progress bar (on a terminal) and a summary line go to stderr. With
    ``processes`` > 1 (``--jobs``), each file is handled by a child ``ccacodec`` process
    (see :func:`run_children`) instead of ``work``.
    """
    hide_bar = quiet or len(jobs) < 2 or not sys.stderr.isatty()
    with tqdm(total=len(jobs), disable=hide_bar, file=sys.stderr, unit="file", leave=False) as bar:
        if processes > 1 and len(jobs) > 1:
            codes = run_children(jobs, processes, bar)
        else:
            codes = batch.run_in_process(jobs, work, lambda exc, src: report(exc, in_label(src)), bar.update)
    failed = sum(code != EXIT_OK for code in codes)
    if len(jobs) > 1 and (failed or not quiet):
        say(f"{len(jobs)} files, {failed} failed")
    return next((code for code in codes if code != EXIT_OK), EXIT_OK)


def run_children(jobs: list[batch.Job], processes: int, bar: tqdm) -> list[int]:
    """Run each job as ``ccacodec <this command and its options> SRC -o DST``, ``processes`` child
    processes at a time (:func:`cca_codec.core.batch.run_processes`); their exit codes in job order.

    The children write their own messages (and JSON) to the inherited stderr (stdout). A child
    that exits with a usage error ends this command with exit 2 (the child said why).
    """
    ctx = click.get_current_context()
    options = option_args(ctx, processes)
    commands = [[sys.executable, "-m", "cca_codec", ctx.info_name, src, "-o", dst, *options] for src, dst in jobs]
    codes = batch.run_processes(commands, processes, bar.update)
    if UsageError.exit_code in codes:
        ctx.exit(UsageError.exit_code)
    return codes


def option_args(ctx: click.Context, processes: int) -> list[str]:
    """The options of the running command as arguments for one child process per file.

    Inputs, ``-o``/``-d`` and ``--jobs`` are left out; without ``--threads``, each child
    gets an equal share of the CPU cores.
    """
    args: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in ("output", "output_dir", "jobs"):
            continue
        value = ctx.params[param.name]
        if value is None or value is False:
            continue
        flag = max(param.opts, key=len)
        args += [flag] if param.is_flag else [flag, str(value)]
    if ctx.params.get("threads") is None:
        args += ["--threads", str(max(1, (os.cpu_count() or 1) // processes))]
    return args


@contextlib.contextmanager
def refinement_bar(effort: int, quiet: bool, label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on a terminal for the refinement steps of one file at ``effort`` > 1, as the
    ``progress`` callback of the encoder; None when there is nothing to show."""
    if effort == 1 or quiet or not sys.stderr.isatty():
        yield None
        return
    with tqdm(desc=f"{label} effort {effort}", unit="step", file=sys.stderr, leave=False) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield progress


# ------------------------------------------------------------------------------- encode


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@output_option
@output_dir_option
@quality_option
@click.option("--target-bpp", type=float, metavar="BPP", help="Choose the quality that gives BPP bits per pixel (within 2 %).")
@click.option("--target-psnr", type=float, metavar="DB", help="Choose the quality that gives a decoded PSNR-RGB of DB (within 0.05 dB).")
@click.option("--target-size", type=int, metavar="BYTES", help="Choose the quality that gives a file of BYTES (within 2 %).")
@context_option
@click.option(
    "--tile", type=click.IntRange(min=0), metavar="N",
    help="Code in tiles of NxN pixels (a multiple of 64; 0: one tile); default: tiles of 1024 above 2.1 megapixels.",
)
@effort_option
@model_option
@device_option
@precision_option
@threads_option
@jobs_option
@max_pixels_option
@no_overwrite_option
@quiet_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file on stdout.")
def encode(
    inputs: tuple[str, ...],
    output: str | None,
    output_dir: str | None,
    quality: float | None,
    target_bpp: float | None,
    target_psnr: float | None,
    target_size: int | None,
    context: str | None,
    tile: int | None,
    effort: int,
    model: str | None,
    device: str,
    precision: str,
    threads: int | None,
    jobs: int,
    max_pixels: int,
    no_overwrite: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Compress images to .cca files.

    INPUT is any image Pillow reads (PNG, JPEG, WebP, TIFF, BMP, PPM ...), or '-' for
    standard input.

    Rate control: --target-bpp, --target-psnr or --target-size (one of them, without
    --quality) searches the fractional quality on real encodings of each image. A target out
    of the model's range gives the nearest end of the range and a warning (exit code 0).
    """
    if as_json and output == STDOUT:
        raise click.UsageError("--json cannot be combined with -o - (standard output carries the .cca data)")
    planned = plan_jobs(inputs, output, output_dir, ".cca")
    set_torch_threads(threads)
    checkpoint, codec = torch_modules()
    from cca_codec.core.files import EncodeOptions, encode_file

    options = EncodeOptions.from_options(
        quality=quality, target_bpp=target_bpp, target_psnr=target_psnr, target_size=target_size,
        context=context, tile=tile, effort=effort, device=device, precision=precision,
    )
    codec.resolve_device(device)
    loaded = checkpoint.load_model(model)
    batch.make_output_dir(output_dir)

    def work(src: str, dst: str) -> None:
        with refinement_bar(effort, quiet, in_label(src)) as progress:
            done = encode_file(src, dst, loaded, options, max_pixels=max_pixels, overwrite=not no_overwrite, progress=progress)
        image, encoded, rate = done.image, done.encoded, done.encoded.rate
        if not quiet:
            say(f"{in_label(src)} -> {out_label(dst)}: {len(encoded.data)} bytes, {done.bpp:.3f} bpp, {done.seconds:.2f} s")
            for note in image.notes:
                say(f"note: {note}")
        if rate is not None and (not rate.met or not quiet):
            kind = "rate control" if rate.met else f"{PROG}: warning"
            say(f"{kind}: {in_label(src)}: {rate.message}")
        if as_json:
            record: dict[str, Any] = {
                "input": src, "output": dst, "bytes": len(encoded.data), "bpp": done.bpp,
                "width": image.width, "height": image.height, "quality": encoded.quality, "context": encoded.context,
                "effort": effort, "seconds": done.seconds, "notes": list(image.notes),
            }
            if rate is not None:
                record["rate_control"] = rate.to_dict()
            click.echo(json.dumps(record))

    click.get_current_context().exit(run_jobs(planned, work, quiet, jobs))


# ------------------------------------------------------------------------------- decode


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@output_option
@output_dir_option
@model_option
@device_option
@precision_option
@threads_option
@jobs_option
@max_pixels_option
@no_overwrite_option
@quiet_option
def decode(
    inputs: tuple[str, ...],
    output: str | None,
    output_dir: str | None,
    model: str | None,
    device: str,
    precision: str,
    threads: int | None,
    jobs: int,
    max_pixels: int,
    no_overwrite: bool,
    quiet: bool,
) -> None:
    """Decompress .cca files to images.

    INPUT may be '-' for standard input. The output format follows the extension of the
    output (.png by default; .bmp .ppm .tif .tiff .webp). The model named in each file is
    used unless --model is given, which must then be the model the file was made with.
    """
    planned = plan_jobs(inputs, output, output_dir, ".png")
    set_torch_threads(threads)
    _, codec = torch_modules()
    from cca_codec.core.files import ModelCache, decode_file

    codec.resolve_device(device)
    models = ModelCache(forced=model)
    batch.make_output_dir(output_dir)

    def work(src: str, dst: str) -> None:
        done = decode_file(
            src, dst, models, device=device, precision=precision, max_pixels=max_pixels, overwrite=not no_overwrite
        )
        if not quiet:
            height, width = done.image.rgb.shape[:2]
            say(f"{in_label(src)} -> {out_label(dst)}: {width}x{height}, {done.seconds:.2f} s")

    click.get_current_context().exit(run_jobs(planned, work, quiet, jobs))


# --------------------------------------------------------------------------------- info


@click.command()
@click.argument("file", metavar="FILE")
@click.option("--json", "as_json", is_flag=True, help="Print the description as one JSON object.")
def info(file: str, as_json: bool) -> None:
    """Describe a .cca file without decoding it.

    FILE may be '-' for standard input.
    """
    try:
        data = read_input(file)
        summary = describe(read_container(data))
    except CodecError as exc:
        click.get_current_context().exit(report(exc, in_label(file)))
    from cca_codec.image.metrics import bits_per_pixel  # NumPy, which --help and this module need not load

    header = summary["header"]
    bpp = bits_per_pixel(len(data), header["width"], header["height"])
    if as_json:
        click.echo(json.dumps({"file": file, **summary, "bpp": bpp}))
        return
    for line in info_lines(in_label(file), len(data), bpp, summary):
        click.echo(line)


def info_lines(label: str, size: int, bpp: float, summary: dict) -> list[str]:
    """Human-readable lines of ``info`` from ``describe()``'s dictionary."""
    def optional_bytes(value: int | None) -> str:
        return "none" if value is None else f"{value} bytes"

    rows, cols = summary["tile_grid"]
    lines = [f"file: {label}", f"  size: {size} bytes, {bpp:.4f} bpp", "header:"]
    lines += [f"  {key}: {value}" for key, value in summary["header"].items()]
    lines.append(f"tiles: {summary['tile_count']} ({rows}x{cols} grid), {summary['stream_bytes']} stream bytes")
    lines += [f"  tile {index}: {length} bytes" for index, length in enumerate(summary["tile_stream_bytes"])]
    lines += [
        "ancillary:",
        f"  icc_profile: {optional_bytes(summary['icc_profile_bytes'])}",
        f"  exif: {optional_bytes(summary['exif_bytes'])}",
        f"  alpha: {'yes' if summary['has_alpha'] else 'no'}",
        f"  skipped unknown chunks: {', '.join(summary['skipped_chunks']) or 'none'}",
        "chunks: " + ", ".join(f"{c['type']} {c['length']}" for c in summary["chunks"]),
        f"overhead: {summary['overhead_bytes']} bytes ({100 * summary['overhead_bytes'] / size:.1f} % of the file)",
    ]
    return lines
