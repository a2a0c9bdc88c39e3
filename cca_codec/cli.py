"""The ``ccacodec`` command line: ``encode``, ``decode``, ``info``, ``models``, ``compare`` (an HTML report beside classical codecs at
equal file size, see :mod:`cca_codec.measure.compare`), and ``encode-dataset`` /
``decode-dataset`` (whole folder trees on Ray Data, see :mod:`cca_codec.dataset`).

Standard output carries only data: ``.cca`` or image bytes (``-o -``), JSON (``--json``),
or the report that ``info`` and ``models`` were asked for. Progress, statistics, notes and
errors go to standard error. Every error is one line, ``ccacodec: error: <message>``
(``ccacodec: internal error: <Type>: <message>`` for bugs; set ``CCACODEC_DEBUG=1`` to see
the traceback too).

Exit codes: 0 success, 1 internal error, 2 usage, 3 unreadable input or unwritable output,
4 corrupt ``.cca`` file, 5 model problem, 130 interrupted; :mod:`cca_codec.base.errors` holds the
table and ties each number to its error class.

With several inputs, a failing file does not stop the others; the exit code is that of
the first file that failed.
"""
from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import click
from tqdm import tqdm

from cca_codec import __version__
from cca_codec.base import runtime
from cca_codec.base.errors import EXIT_INTERRUPTED, CodecError, InputError, UsageError, one_line
from cca_codec.base.fileio import STDOUT, read_file, write_output
from cca_codec.format.container import CONTEXT_MODES, DEFAULT_MAX_PIXELS, describe, read_container

if TYPE_CHECKING:
    from cca_codec.core.checkpoint import LoadedModel

PROG = "ccacodec"
STDIN = "-"
EXIT_OK = 0
EXIT_INTERNAL = CodecError.exit_code
DEBUG_ENV = "CCACODEC_DEBUG"
STDIN_LABEL = "standard input"
STDOUT_LABEL = "standard output"

Job = tuple[str, str]
"""(input path or "-", output path or "-") of one file to process."""


# ------------------------------------------------------------------------------ messages


def _say(line: str) -> None:
    """Print a human line on stderr without breaking a progress bar."""
    tqdm.write(line, file=sys.stderr)


def _report(exc: Exception, label: str | None = None) -> int:
    """Print the one-line message for ``exc`` on stderr and return its exit code.

    ``label`` (the input being processed) is prefixed unless the message already names it.
    """
    if isinstance(exc, CodecError):
        message, kind, code = str(exc), "error", exc.exit_code
    else:
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exception(exc, file=sys.stderr)
        message, kind, code = f"{type(exc).__name__}: {exc}", "internal error", EXIT_INTERNAL
    message = one_line(message)
    if label is not None and label not in message:
        message = f"{label}: {message}"
    _say(f"{PROG}: {kind}: {message}")
    return code


def _in_label(path: str) -> str:
    """How an input is named in messages ("standard input" for "-")."""
    return STDIN_LABEL if path == STDIN else path


def _out_label(path: str) -> str:
    """How an output is named in messages ("standard output" for "-")."""
    return STDOUT_LABEL if path == STDOUT else path


# --------------------------------------------------------------------------- the group


class _CodecGroup(click.Group):
    """A Click group that turns exceptions from its subcommands into exit codes.

    ``CodecError`` -> one line and its ``exit_code``; ``KeyboardInterrupt`` -> 130; anything
    else -> one line naming the exception type, exit 1. Click's own usage errors pass through
    (exit 2, Click's message), and so does a closed stdout pipe (``ccacodec info x | head``),
    which Click's ``main`` handles. Doing this in ``invoke`` (not in ``main``) makes
    ``click.testing.CliRunner`` see the same behaviour as the console script.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, BrokenPipeError):
            raise  # Click reports these itself (a closed stdout pipe: quiet exit 1, as Click does)
        except KeyboardInterrupt:
            _say(f"{PROG}: interrupted")
            code = EXIT_INTERRUPTED
        except Exception as exc:  # noqa: BLE001 - every error becomes one line and an exit code
            code = _report(exc)
        ctx.exit(code)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """``--version``: ccacodec's version and those of the libraries that decide the bits."""
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"{PROG} {__version__}")
    for package in ("torch", "constriction"):
        try:
            click.echo(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            click.echo(f"{package} (not installed)")
    ctx.exit(EXIT_OK)


@click.group(cls=_CodecGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
    help="Show the versions of ccacodec, torch and constriction, and exit.",
)
def cli() -> None:
    """ccacodec: a learned image codec writing range-coded .cca files."""


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the command line and exit with its code.

    Before torch loads, OpenMP threads get a short spin before they sleep and the C heap keeps
    freed blocks for reuse (cca_codec.base.runtime: measured there). Once a command that loaded
    torch is done, the process ends without the interpreter's teardown (runtime.leave_process:
    streams flushed, atexit handlers run), which would spend tenths of a second freeing torch's
    objects; otherwise the heap is frozen (gc.freeze) so that the shutdown does not search
    them for cycles (seconds on a loaded machine: docs/RESULTS.md). Without torch (``--help``,
    ``--version``, usage errors) the SystemExit propagates, for callers in the same process.
    """
    runtime.tune_process()
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name=PROG)
    except SystemExit as done:
        code = 0 if done.code is None else done.code
        if isinstance(code, int) and "torch" in sys.modules and runtime.only_thread():
            runtime.leave_process(code)
        raise
    finally:
        gc.freeze()


# ------------------------------------------------------------------------ shared helpers


def _torch_modules() -> tuple[ModuleType, ModuleType]:
    """Import and return ``(checkpoint, codec)``, the modules that need torch.

    Imported only by the commands that use them, so ``--help`` and ``info`` stay fast.
    Deprecation warnings that dependencies emit while being imported are not shown.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        from cca_codec.core import checkpoint, codec
    return checkpoint, codec


def _set_threads(threads: int | None) -> None:
    """Apply ``--threads``: torch's intra-op (and, when still possible, inter-op) threads."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only settable once per process, before any parallel work
        pass


@contextlib.contextmanager
def _refinement_bar(effort: int, quiet: bool, label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on a terminal for the refinement steps of one file at ``effort`` > 1, as the
    ``progress`` callback of ``encode_image``; None when there is nothing to show."""
    if effort == 1 or quiet or not sys.stderr.isatty():
        yield None
        return
    with tqdm(desc=f"{label} effort {effort}", unit="step", file=sys.stderr, leave=False) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield progress


def _read_bytes(path: str) -> bytes:
    """The content of ``path``, or all of standard input for "-" (InputError when unreadable)."""
    if path == STDIN:
        return sys.stdin.buffer.read()
    return read_file(path)


def _plan_jobs(inputs: Sequence[str], output: str | None, out_dir: str | None, suffix: str) -> list[Job]:
    """Pair every input with its output path, checking the option rules (click.UsageError).

    One input: ``-o`` if given, else ``DIR/<name><suffix>`` with ``-d``, else the input with
    ``suffix``. Several inputs: ``-o`` is not allowed; outputs go to ``-d DIR`` or next to
    each input. Standard input needs ``-o`` and cannot be one of several inputs.
    """
    if output is not None and out_dir is not None:
        raise click.UsageError("use either -o/--output or -d/--output-dir, not both")
    if len(inputs) > 1:
        if output is not None:
            raise click.UsageError("-o/--output takes one input only; use -d/--output-dir DIR with several inputs")
        if STDIN in inputs:
            raise click.UsageError("standard input (-) can only be encoded or decoded on its own, with -o")
    if output is not None:
        jobs = [(inputs[0], output)]
    elif STDIN in inputs:
        raise click.UsageError("reading standard input (-) needs -o OUT (or -o - for standard output)")
    else:
        jobs = [(src, _default_output(src, out_dir, suffix)) for src in inputs]
    targets = [os.path.abspath(dst) for _, dst in jobs if dst != STDOUT]
    if len(set(targets)) != len(targets):
        raise click.UsageError("several inputs would be written to the same output file")
    for src, dst in jobs:
        if src != STDIN and dst != STDOUT and os.path.abspath(src) == os.path.abspath(dst):
            raise click.UsageError(f"output {dst} would overwrite its input")
    return jobs


def _default_output(src: str, out_dir: str | None, suffix: str) -> str:
    """``src`` with ``suffix`` instead of its own, in ``out_dir`` when given."""
    renamed = Path(src).with_suffix(suffix)
    return str(Path(out_dir) / renamed.name if out_dir is not None else renamed)


def _make_dir(out_dir: str | None) -> None:
    """Create ``-d DIR`` (and its parents) if it does not exist yet."""
    if out_dir is None:
        return
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output directory {out_dir}: {exc.strerror or exc}") from None


def _check_not_exists(path: str, no_overwrite: bool) -> None:
    """With ``--no-overwrite``, refuse an existing output before doing any work for it."""
    if no_overwrite and path != STDOUT and os.path.lexists(path):
        raise InputError(f"{path} exists (--no-overwrite)")


def _run_jobs(jobs: list[Job], work: Callable[[str, str], None], quiet: bool, processes: int = 1) -> int:
    """Run ``work(src, dst)`` for every job; return the exit code of the first failure, or 0.

    A failing file is reported and the next one is processed; a ``UsageError`` (an option
    that cannot work for any file) and ``KeyboardInterrupt`` stop the run. With several
    inputs, a progress bar (on a terminal) and a summary line go to stderr. With
    ``processes`` > 1 (``--jobs``), each file is handled by a child ``ccacodec`` process
    (see :func:`_run_children`) instead of ``work``.
    """
    hide_bar = quiet or len(jobs) < 2 or not sys.stderr.isatty()
    with tqdm(total=len(jobs), disable=hide_bar, file=sys.stderr, unit="file", leave=False) as bar:
        if processes > 1 and len(jobs) > 1:
            codes = _run_children(jobs, processes, bar)
        else:
            codes = []
            for src, dst in jobs:
                codes.append(_run_one(work, src, dst))
                bar.update()
    failed = sum(code != EXIT_OK for code in codes)
    if len(jobs) > 1 and (failed or not quiet):
        _say(f"{len(jobs)} files, {failed} failed")
    return next((code for code in codes if code != EXIT_OK), EXIT_OK)


def _run_one(work: Callable[[str, str], None], src: str, dst: str) -> int:
    """``work(src, dst)``; a failure other than a ``UsageError`` is reported and becomes its exit code."""
    try:
        work(src, dst)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported, then the next file is processed
        return _report(exc, _in_label(src))
    return EXIT_OK


def _run_children(jobs: list[Job], processes: int, bar: tqdm) -> list[int]:
    """Run each job as ``ccacodec <this command and its options> SRC -o DST`` in up to
    ``processes`` child processes at a time; return their exit codes in job order.

    The children write their own messages (and JSON) to the inherited stderr (stdout). A
    child that exits with a usage error or 130 stops the run; on Ctrl-C the children get
    SIGINT too, and each removes its temporary file.
    """
    ctx = click.get_current_context()
    options = _option_args(ctx, processes)
    codes: dict[int, int] = {}
    running: dict[subprocess.Popen, int] = {}
    pending = list(enumerate(jobs))
    try:
        while pending or running:
            while pending and len(running) < processes:
                index, (src, dst) = pending.pop(0)
                command = [sys.executable, "-m", "cca_codec", ctx.info_name, src, "-o", dst, *options]
                running[subprocess.Popen(command, stdin=subprocess.DEVNULL)] = index
            finished = _wait_any(running)
            codes[running.pop(finished)] = finished.returncode
            bar.update()
            if finished.returncode in (UsageError.exit_code, EXIT_INTERRUPTED):
                pending.clear()
    except BaseException:
        for child in running:
            child.send_signal(signal.SIGINT)
        for child in running:
            child.wait()
        raise
    if EXIT_INTERRUPTED in codes.values():
        raise KeyboardInterrupt
    if UsageError.exit_code in codes.values():
        ctx.exit(UsageError.exit_code)
    return [codes[i] for i in sorted(codes)]


def _wait_any(running: dict[subprocess.Popen, int]) -> subprocess.Popen:
    """Block until one of the ``running`` children exits; return it (its returncode set)."""
    while True:
        for child in running:
            if child.poll() is not None:
                return child
        time.sleep(0.05)


def _option_args(ctx: click.Context, processes: int) -> list[str]:
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


_output_option = click.option(
    "-o", "--output", metavar="OUT|-", help="Output file, '-' for standard output (one input only)."
)
_output_dir_option = click.option(
    "-d", "--output-dir", metavar="DIR", type=click.Path(file_okay=False),
    help="Directory for the outputs (created if needed); default: next to each input.",
)
_model_option = click.option(
    "--model", metavar="ID|DIR", help="Model id (looked up on the model search path) or model directory."
)
_device_option = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
    help="Where the network runs.",
)
_precision_option = click.option(  # the choices of cca_codec.core.precision.PRECISIONS (not imported: it needs torch)
    "--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
    help="How the image transforms run: bf16 (fast, on a CPU with native bf16), fp32 (exact), auto: bf16 where native.",
)
_threads_option = click.option(
    "--threads", type=click.IntRange(min=1), metavar="N", help="CPU threads torch may use (default: torch's choice)."
)
_no_overwrite_option = click.option("--no-overwrite", is_flag=True, help="Fail instead of replacing an existing output.")
_quiet_option = click.option("--quiet", is_flag=True, help="No statistics, notes or progress bar on stderr.")
_jobs_option = click.option(
    "-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
    help="Files processed at the same time, each in its own process (default: one after the other).",
)
_effort_option = click.option(
    "--effort", type=click.IntRange(1, 9), default=1, show_default=True, metavar="1..9",
    help="Encoder effort: above 1 the latents are optimized for each image first (slower; smaller files for the "
    "same quality; the same decoder reads them).",
)
_max_pixels_option = click.option(
    "--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True, metavar="N",
    help="Refuse images whose width*height exceeds N (decompression-bomb guard).",
)


# ------------------------------------------------------------------------------ encode


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@_output_option
@_output_dir_option
@click.option("-q", "--quality", type=float, help="Quality, 1 .. number of the model's qualities (may be fractional); default: the model's.")
@click.option("--target-bpp", type=float, metavar="BPP", help="Choose the quality that gives BPP bits per pixel (within 2 %).")
@click.option("--target-psnr", type=float, metavar="DB", help="Choose the quality that gives a decoded PSNR-RGB of DB (within 0.05 dB).")
@click.option("--target-size", type=int, metavar="BYTES", help="Choose the quality that gives a file of BYTES (within 2 %).")
@click.option("--context", type=click.Choice(CONTEXT_MODES), help="Context mode; default: checkerboard when the model has a spatial context.")
@click.option(
    "--tile", type=click.IntRange(min=0), metavar="N",
    help="Code in tiles of NxN pixels (a multiple of 64; 0: one tile); default: tiles of 1024 above 2.1 megapixels.",
)
@_effort_option
@_model_option
@_device_option
@_precision_option
@_threads_option
@_jobs_option
@_max_pixels_option
@_no_overwrite_option
@_quiet_option
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
    planned = _plan_jobs(inputs, output, output_dir, ".cca")
    _set_threads(threads)
    checkpoint, codec = _torch_modules()
    from cca_codec.core.ratecontrol import Target, encode_to_target
    from cca_codec.image.io import load_image

    target = Target.from_options(bpp=target_bpp, psnr=target_psnr, size=target_size, quality=quality)
    codec.resolve_device(device)
    loaded = checkpoint.load_model(model)
    q = float(loaded.default_quality if quality is None else quality)
    mode = context or codec.default_context(loaded)
    _make_dir(output_dir)

    def work(src: str, dst: str) -> None:
        _check_not_exists(dst, no_overwrite)
        image = load_image(_read_bytes(src) if src == STDIN else src, max_pixels=max_pixels)
        start = time.perf_counter()
        with _refinement_bar(effort, quiet, _in_label(src)) as progress:
            coding = {"context": mode, "device": device, "tile": tile, "precision": precision, "effort": effort, "progress": progress}
            if target is None:
                rate, chosen = None, q
                data = codec.encode_image(image, loaded, quality=q, **coding)
            else:
                rate = encode_to_target(image, loaded, target, **coding)
                data, chosen = rate.data, rate.quality
        seconds = time.perf_counter() - start
        write_output(dst, data, overwrite=not no_overwrite)
        bpp = 8 * len(data) / (image.width * image.height)
        if not quiet:
            _say(f"{_in_label(src)} -> {_out_label(dst)}: {len(data)} bytes, {bpp:.3f} bpp, {seconds:.2f} s")
            for note in image.notes:
                _say(f"note: {note}")
        if rate is not None and (not rate.met or not quiet):
            kind = "rate control" if rate.met else f"{PROG}: warning"
            _say(f"{kind}: {_in_label(src)}: {rate.message}")
        if as_json:
            record = {
                "input": src, "output": dst, "bytes": len(data), "bpp": bpp,
                "width": image.width, "height": image.height, "quality": chosen, "context": mode, "effort": effort,
                "seconds": seconds, "notes": list(image.notes),
            }
            if rate is not None:
                record["rate_control"] = rate.to_dict()
            click.echo(json.dumps(record))

    click.get_current_context().exit(_run_jobs(planned, work, quiet, jobs))


# ------------------------------------------------------------------------------ decode


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@_output_option
@_output_dir_option
@_model_option
@_device_option
@_precision_option
@_threads_option
@_jobs_option
@_max_pixels_option
@_no_overwrite_option
@_quiet_option
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
    planned = _plan_jobs(inputs, output, output_dir, ".png")
    _set_threads(threads)
    checkpoint, codec = _torch_modules()
    from cca_codec.image.io import save_image

    codec.resolve_device(device)
    models: dict[str, LoadedModel] = {}
    forced = checkpoint.load_model(model) if model is not None else None
    _make_dir(output_dir)

    def model_for(model_id: str) -> LoadedModel:
        """--model, or the model a file names (loaded once per id)."""
        if forced is not None:
            return forced
        if model_id not in models:
            models[model_id] = checkpoint.load_model(model_id)
        return models[model_id]

    def work(src: str, dst: str) -> None:
        _check_not_exists(dst, no_overwrite)
        data = _read_bytes(src)
        # The whole container is checked first: a corrupt file is exit 4 before a model is looked for.
        loaded = model_for(read_container(data, max_pixels=max_pixels).header.model_id)
        start = time.perf_counter()
        image = codec.decode_image(data, loaded, device=device, max_pixels=max_pixels, precision=precision)
        seconds = time.perf_counter() - start
        save_image(image, dst, overwrite=not no_overwrite)
        if not quiet:
            height, width = image.rgb.shape[:2]
            _say(f"{_in_label(src)} -> {_out_label(dst)}: {width}x{height}, {seconds:.2f} s")

    click.get_current_context().exit(_run_jobs(planned, work, quiet, jobs))


# ------------------------------------------------------------------- datasets (Ray Data)


def _dataset_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options ``encode-dataset`` and ``decode-dataset`` share: the engine, its size, output."""
    options = [
        click.option(
            "--engine", type=click.Choice(["ray"]), default="ray", show_default=True, expose_value=False,
            help="The engine that spreads the files over workers: Ray Data.",
        ),
        click.option("--address", metavar="ADDR", help="Ray cluster to join (auto, HOST:PORT, ray://HOST:10001); default: $RAY_ADDRESS, else a local instance."),
        click.option("--num-cpus", type=click.IntRange(min=1), metavar="N", help="CPUs of the local instance (default: all); not with --address."),
        click.option("--workers", type=click.IntRange(min=1), metavar="N", help="Coding workers (default: as many as the cluster's CPUs, or GPUs, hold)."),
        click.option(
            "--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True, metavar="C",
            help="CPUs each worker reserves (and torch threads it uses).",
        ),
        click.option(
            "--gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True, metavar="G",
            help="GPUs each worker reserves (0.5: two workers per GPU); above 0 the workers code on CUDA.",
        ),
        click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, metavar="N", help="Files a worker codes per batch."),
        _max_pixels_option,
        click.option("--quiet", is_flag=True, help="No progress bar and no summary line unless a file failed."),
        click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _dataset_module() -> ModuleType:
    """Import and return :mod:`cca_codec.dataset` (torch and CompressAI without their deprecation warnings)."""
    _torch_modules()
    from cca_codec import dataset

    return dataset


def _ray_options(dataset: ModuleType, params: dict[str, Any]) -> Any:
    """The ``RayOptions`` of the engine options in ``params``."""
    if params["address"] is not None and params["num_cpus"] is not None:
        raise click.UsageError("--num-cpus sizes a local Ray instance; it cannot be combined with --address")
    return dataset.RayOptions(
        address=params["address"], num_cpus=params["num_cpus"], workers=params["workers"],
        cpus_per_worker=params["cpus_per_worker"], gpus_per_worker=params["gpus_per_worker"], batch_size=params["batch_size"],
    )


def _run_dataset(run: Callable[..., Any], quiet: bool, as_json: bool) -> None:
    """Call ``run(progress=...)`` (an ``encode_dataset`` / ``decode_dataset`` call), then report:
    each failed file on one line, a summary line (or ``--json``), the first failure's exit code."""
    with tqdm(disable=quiet or not sys.stderr.isatty(), file=sys.stderr, unit="file", leave=False) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        summary = run(progress=progress)
    for failure in summary.failures:
        _say(f"{PROG}: error: {failure['error']}")
    if summary.failures or not quiet:
        _say(
            f"{summary.total} files: {summary.coded} coded, {summary.skipped} done before, {summary.failed} failed; "
            f"{summary.images_per_second:.2f} images/s; manifest {summary.manifest}"
        )
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
    click.get_current_context().exit(summary.exit_code)


@cli.command("encode-dataset")
@click.argument("src", metavar="SRC")
@click.argument("dst", metavar="DST")
@click.option("-q", "--quality", type=float, help="Quality, 1 .. number of the model's qualities (may be fractional); default: the model's.")
@click.option("--context", type=click.Choice(CONTEXT_MODES), help="Context mode; default: checkerboard when the model has a spatial context.")
@click.option("--tile", type=click.IntRange(min=0), metavar="N", help="Tiles of NxN pixels (as for encode); default: automatic.")
@_effort_option
@_model_option
@_dataset_options
def encode_dataset_cmd(src: str, dst: str, **params: Any) -> None:
    """Encode every image under SRC to .cca files under DST, on a Ray cluster.

    DST mirrors SRC's folders (SRC/a/b.png -> DST/a/b.cca). DST/manifest.jsonl holds one
    record per file (sizes, bpp, settings, or the error); a failing file never stops the
    others, and a rerun skips the files already coded with the same settings. Exit code:
    that of the first failed file, else 0.
    """
    dataset = _dataset_module()
    options = _ray_options(dataset, params)

    def run(progress: Callable[[int, int], None]) -> Any:
        return dataset.encode_dataset(
            src, dst, quality=params["quality"], context=params["context"], model=params["model"], tile=params["tile"],
            effort=params["effort"], max_pixels=params["max_pixels"], ray_options=options, progress=progress,
        )

    _run_dataset(run, params["quiet"], params["as_json"])


@cli.command("decode-dataset")
@click.argument("src", metavar="SRC")
@click.argument("dst", metavar="DST")
@_model_option
@_dataset_options
def decode_dataset_cmd(src: str, dst: str, **params: Any) -> None:
    """Decode every .cca file under SRC to PNG under DST, on a Ray cluster.

    As encode-dataset (SRC/a/b.cca -> DST/a/b.png, DST/manifest.jsonl, reruns skip what is
    done). Each file is decoded with the model it names unless --model is given.
    """
    dataset = _dataset_module()
    options = _ray_options(dataset, params)

    def run(progress: Callable[[int, int], None]) -> Any:
        return dataset.decode_dataset(
            src, dst, model=params["model"], max_pixels=params["max_pixels"], ray_options=options, progress=progress
        )

    _run_dataset(run, params["quiet"], params["as_json"])


# -------------------------------------------------------------------------------- info


@cli.command()
@click.argument("file", metavar="FILE")
@click.option("--json", "as_json", is_flag=True, help="Print the description as one JSON object.")
def info(file: str, as_json: bool) -> None:
    """Describe a .cca file without decoding it.

    FILE may be '-' for standard input.
    """
    try:
        data = _read_bytes(file)
        summary = describe(read_container(data))
    except CodecError as exc:
        click.get_current_context().exit(_report(exc, _in_label(file)))
    header = summary["header"]
    bpp = 8 * len(data) / (header["width"] * header["height"])
    if as_json:
        click.echo(json.dumps({"file": file, **summary, "bpp": bpp}))
        return
    for line in _info_lines(_in_label(file), len(data), bpp, summary):
        click.echo(line)


def _info_lines(label: str, size: int, bpp: float, summary: dict) -> list[str]:
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


# ------------------------------------------------------------------------------ compare


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE...")
@click.option("--out", "out_dir", required=True, metavar="DIR", type=click.Path(file_okay=False), help="Report folder (created; an earlier report there is replaced).")
@click.option("-q", "--quality", type=float, help="ccacodec's quality; default: the model's.")
@click.option("--bpp", type=float, metavar="BPP", help="Code ccacodec at BPP bits per pixel (rate control, within 2 %) instead of a quality.")
@click.option("--size", type=int, metavar="BYTES", help="Code ccacodec at a file of BYTES (rate control, within 2 %) instead of a quality.")
@click.option(
    "--codecs", metavar="LIST",
    help="Comma-separated codecs to set beside ccacodec: jpeg, jpeg420, webp, avifpil, cwebp, avif, jxl, heic "
    "(missing tools are skipped); default: jpeg,webp,avif,jxl.",
)
@click.option("--context", type=click.Choice(CONTEXT_MODES), help="Context mode; default: checkerboard when the model has a spatial context.")
@_effort_option
@_model_option
@_device_option
@_precision_option
@_threads_option
@_max_pixels_option
@_quiet_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image on stdout.")
def compare(
    inputs: tuple[str, ...],
    out_dir: str,
    quality: float | None,
    bpp: float | None,
    size: int | None,
    codecs: str | None,
    context: str | None,
    effort: int,
    model: str | None,
    device: str,
    precision: str,
    threads: int | None,
    max_pixels: int,
    quiet: bool,
    as_json: bool,
) -> None:
    """Code photos with ccacodec and with classical codecs at the same file size; write an HTML report.

    Each compared codec is coded at the setting whose file comes closest to ccacodec's bytes (within
    3 % where its settings allow; the report says so where they do not), decoded by its own decoder
    and measured (bpp, PSNR-RGB, MS-SSIM, SSIMULACRA2, encode and decode seconds). DIR/index.html
    shows the pictures side by side under a slider and crops where the codecs differ most; it opens
    offline. A compared codec that fails is reported and the others still run.
    """
    _set_threads(threads)
    checkpoint, codec = _torch_modules()
    from cca_codec.core.ratecontrol import Target
    from cca_codec.measure import classical
    from cca_codec.measure.compare import DEFAULT_CODECS, compare_images

    target = Target.from_options(bpp=bpp, size=size, quality=quality)
    keys = [key.strip() for key in codecs.split(",") if key.strip()] if codecs is not None else list(DEFAULT_CODECS)
    compared = classical.available(classical.resolve(keys), lambda line: None if quiet else _say(f"{PROG}: {line}"))
    codec.resolve_device(device)
    loaded = checkpoint.load_model(model)
    reports = compare_images(
        [Path(p) for p in inputs], Path(out_dir), loaded, compared, quality=quality, target=target, context=context,
        device=device, precision=precision, effort=effort, max_pixels=max_pixels, say=lambda line: _say(f"{PROG}: {line}"),
    )
    for report in reports:
        if as_json:
            click.echo(json.dumps(report.to_dict()))
        if not quiet:
            ours = report.codecs[0]
            _say(f"{report.image}: {ours.bytes} bytes ({ours.bpp:.3f} bpp); " + ", ".join(
                f"{v.name} {v.psnr:.2f} dB" for v in report.codecs
            ))
    if not quiet:
        _say(f"wrote {Path(out_dir) / 'index.html'}")


# ------------------------------------------------------------------------------ models


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the list as one JSON object.")
def models(as_json: bool) -> None:
    """List the installed models and where they were searched for."""
    checkpoint, _ = _torch_modules()
    search_path = [str(p) for p in checkpoint.model_search_path()]
    entries = [_model_entry(model_id, directory) for model_id, directory in checkpoint.available_models().items()]
    if as_json:
        click.echo(json.dumps({"search_path": search_path, "default": checkpoint.DEFAULT_MODEL_ID, "models": entries}))
        return
    if not entries:
        click.echo("no models installed; searched:")
        click.echo("\n".join(f"  {p}" for p in search_path))
        click.echo("install a model directory there, set CCACODEC_MODELS, or pass --model DIR")
        return
    for entry in entries:
        default = " (default)" if entry["id"] == checkpoint.DEFAULT_MODEL_ID else ""
        click.echo(f"{entry['id']}{default}: {entry['directory']}")
        if "error" in entry:
            click.echo(f"  unreadable model.json: {entry['error']}")
            continue
        click.echo(f"  configuration: {entry['config']}, weights {entry['weights_dtype']}, default quality {entry['default_quality']}")
        click.echo("  qualities: " + ", ".join(f"{q['quality']} (lambda {q['lambda']:.4g})" for q in entry["qualities"]))
    click.echo("searched: " + os.pathsep.join(search_path))


def _model_entry(model_id: str, directory: Path) -> dict:
    """What ``models`` shows of one model directory, read from its model.json only."""
    entry: dict[str, Any] = {"id": model_id, "directory": str(directory)}
    try:
        meta = json.loads((directory / "model.json").read_text())
        entry.update(
            config=meta["config"]["name"],
            weights_dtype=meta.get("weights_dtype", "?"),
            default_quality=meta.get("default_quality"),
            qualities=[{"quality": q["quality"], "lambda": q["lambda"]} for q in meta["qualities"]],
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        entry["error"] = one_line(f"{type(exc).__name__}: {exc}")
    return entry


@cli.command("import-official")
@click.argument("checkpoints", nargs=-1, required=True, metavar="CKPT...")
@click.option(
    "--lambda", "lambdas", type=float, multiple=True, required=True, metavar="L",
    help="Official lambda of each CKPT, in the same order: 3.5, 1.8, 0.85 or 0.3 (qualities 3 to 6).",
)
@click.option("--model-id", metavar="ID", help="Id (and directory name) of the new model; default: cca-official.")
@click.option(
    "--out", "out_dir", metavar="DIR", type=click.Path(file_okay=False),
    help="Directory to create the model directory ID in; default: the first writable entry of the model search path.",
)
def import_official_cmd(checkpoints: tuple[str, ...], lambdas: tuple[float, ...], model_id: str | None, out_dir: str | None) -> None:
    """Install the CCA authors' published checkpoints as one model.

    Each CKPT (a .pth.tar from LabShuHangGU/CCA) is followed by its --lambda:

      ccacodec import-official cca_0.3.pth.tar --lambda 0.3 cca_0.85.pth.tar --lambda 0.85

    The model has one network per lambda and codes at those qualities only.
    """
    if len(checkpoints) != len(lambdas):
        raise click.UsageError(f"give one --lambda per checkpoint ({len(checkpoints)} checkpoints, {len(lambdas)} --lambda)")
    _torch_modules()  # torch and CompressAI, imported without their deprecation warnings
    from cca_codec.modeltools import official

    directory = official.import_official(
        [(Path(c), lam) for c, lam in zip(checkpoints, lambdas)], model_id or official.DEFAULT_OFFICIAL_MODEL_ID, out_dir
    )
    _say(f"installed model {directory.name} in {directory}")


class _VerbatimCommand(click.Command):
    """A command whose arguments reach its callback (as `args`) exactly as typed: click's own
    parser would drop a `--`, which the argparse side needs (`train-bg start -- FLAGS`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.params["args"] = tuple(args)
        return []


def _passthrough_command(name: str, module: str, summary: str) -> None:
    """Register `ccacodec NAME ...` as a command that hands its arguments verbatim, --help and
    `--` included, to the argparse `main(argv, prog)` of ``cca_codec.<module>`` (imported only
    when called)."""

    @cli.command(name, cls=_VerbatimCommand, help=summary, add_help_option=False)
    def command(args: tuple[str, ...]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            target = importlib.import_module(f"{__package__}.{module}")
        target.main(list(args), prog=f"{PROG} {name}")


_passthrough_command("eval", "evaluate", "Rate-distortion evaluation of a folder of images (see `ccacodec eval --help`).")
_passthrough_command("train", "train", "Train a model with the CCA loss (see `ccacodec train --help`).")
_passthrough_command(
    "train-bg", "background", "The background training run: start, status, pause, resume, stop, finish (see `ccacodec train-bg --help`)."
)
_passthrough_command(
    "bench", "bench", "Per-stage speed of encode and decode, beside classical codecs (see `ccacodec bench --help`)."
)
