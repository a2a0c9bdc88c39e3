"""``ccacodec eval`` (rate-distortion evaluation of a folder, :mod:`cca_codec.measure.evaluate`) and
``ccacodec bench`` (per-stage speed, :mod:`cca_codec.measure.bench`).

Both keep the options, help texts, outputs and exit codes they had as argparse tools: their help
text is the docstring of the module that does the work, ``--anchor`` takes one or more files each
time, and an error is one line (``error: ...`` for eval, ``ccacodec bench: error: ...`` for bench)
with the error's exit code.
"""
from __future__ import annotations

import inspect
import json
import textwrap
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from cca_codec.base.errors import CodecError, UsageError

from .common import CLASSICAL_CODECS, PRECISIONS, PROG, say, torch_modules

DEFAULT_BENCH_CODECS = "jpeg,webp,avifpil,cwebp,jxl,avif"
"""What ``bench --compare`` times beside ccacodec when not told otherwise."""


class ToolCommand(click.Command):
    """A measuring tool's command: its --help text is the docstring of the module doing the work
    (``module()`` imports it when --help asks), printed as written; each option named in
    ``extend`` takes one or more values every time it is given (argparse's ``nargs="+"``:
    ``--anchor A B`` is ``--anchor A --anchor B``)."""

    def __init__(self, *args: Any, module: Callable[[], ModuleType], extend: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.module = module
        self.extend = tuple(extend)

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_paragraph()
        formatter.write(textwrap.indent(inspect.cleandoc(self.module().__doc__ or ""), "  ") + "\n")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, spread_values(args, self.extend))


def spread_values(args: Sequence[str], options: Sequence[str]) -> list[str]:
    """``args`` with the values that follow one of ``options`` each given their own option: up to the
    next argument that starts with "-" (a lone "-" is a value) or the end of the options ("--")."""
    out: list[str] = []
    current: str | None = None
    for index, arg in enumerate(args):
        if arg == "--":
            return out + list(args[index:])
        if current is not None and (arg == "-" or not arg.startswith("-")):
            if out[-1] != current:
                out.append(current)
            out.append(arg)
            continue
        current = arg if arg in options else None
        out.append(arg)
    return out


def comma_list(text: str) -> list[str]:
    """The non-empty items of a comma-separated list."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _evaluate_module() -> ModuleType:
    torch_modules()
    from cca_codec.measure import evaluate

    return evaluate


def _bench_module() -> ModuleType:
    torch_modules()
    from cca_codec.measure import bench

    return bench


# --------------------------------------------------------------------------------- eval


@click.command(
    "eval", cls=ToolCommand, module=_evaluate_module, extend=["--anchor"],
    help="Rate-distortion evaluation of a folder of images (see `ccacodec eval --help`).",
)
@click.argument("directory", type=click.Path(path_type=Path), metavar="DIR")
@click.option("--model", metavar="MODEL", help="model id or model directory (default: the default model)")
@click.option("--qualities", metavar="QUALITIES", help="comma-separated qualities (default: every integer quality)")
@click.option("--context", metavar="CONTEXT", help="comma-separated context modes: grouped, checkerboard (default: the model's default)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu")
@click.option("--limit", type=int, metavar="LIMIT", help="evaluate only the first N images")
@click.option("--out", type=click.Path(path_type=Path), required=True, metavar="OUT", help="folder for the results JSON files")
@click.option(
    "--compare", metavar="CODECS",
    help=f"comma-separated classical codecs to run on the same images: {','.join(CLASSICAL_CODECS)}",
)
@click.option("--anchor", "anchors", type=click.Path(path_type=Path), multiple=True, metavar="FILE", help="anchor results JSON (repeatable)")
@click.option("--plot", type=click.Path(path_type=Path), metavar="PNG", help="write an RD plot here")
@click.option(
    "--html", type=click.Path(path_type=Path), metavar="FILE",
    help="write the report as one self-contained HTML page: plot, tables, crops of the first image at a middle rate",
)
@click.option("--workdir", type=click.Path(path_type=Path), metavar="WORKDIR", help="keep the .cca files here (default: a temporary folder)")
@click.option("--no-progress", is_flag=True, help="no progress bar on stderr")
def eval_command(
    directory: Path,
    model: str | None,
    qualities: str | None,
    context: str | None,
    device: str,
    limit: int | None,
    out: Path,
    compare: str | None,
    anchors: tuple[Path, ...],
    plot: Path | None,
    html: Path | None,
    workdir: Path | None,
    no_progress: bool,
) -> None:
    if limit is not None and limit < 1:
        raise click.UsageError("--limit must be at least 1")
    prog = f"{PROG} eval"
    ev = _evaluate_module()
    from cca_codec.measure.curves import markdown_bd_table, markdown_table

    try:
        try:
            qs = [float(q) for q in comma_list(qualities)] if qualities else None
        except ValueError:
            raise UsageError(f"--qualities must be comma-separated numbers, got {qualities!r}") from None
        report = ev.evaluate_folder(
            directory, out, model=model, qualities=qs, contexts=comma_list(context) if context else None,
            codecs=comma_list(compare or ""), anchors=list(anchors), limit=limit, device=device, plot=plot, html=html,
            workdir=workdir, progress=not no_progress, say=lambda line: say(f"{prog}: {line}"),
        )
    except CodecError as exc:
        click.echo(f"error: {exc}", err=True)
        click.get_current_context().exit(exc.exit_code)
    click.echo(markdown_table(report.results))
    if report.compared:
        click.echo()
        click.echo(markdown_table(report.compared, label="codec"))
    if report.bd_rows:
        click.echo()
        click.echo(markdown_bd_table(report.bd_rows))
    for path in report.written:
        say(f"wrote {path}")


# -------------------------------------------------------------------------------- bench


def thread_counts(text: str) -> list[int]:
    """``--threads``: comma-separated thread counts, each at least 1 (UsageError otherwise)."""
    try:
        counts = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UsageError(f"--threads must be comma-separated integers, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise UsageError(f"--threads needs thread counts of at least 1, got {text!r}")
    return counts


def precision_names(text: str) -> list[str]:
    """``--precision``: comma-separated names from PRECISIONS (UsageError otherwise)."""
    names = comma_list(text)
    if not names or any(name not in PRECISIONS for name in names):
        raise UsageError(f"--precision must be comma-separated names from {', '.join(PRECISIONS)}, got {text!r}")
    return names


@click.command(
    "bench", cls=ToolCommand, module=_bench_module,
    help="Per-stage speed of encode and decode, beside classical codecs (see `ccacodec bench --help`).",
)
@click.argument("images", nargs=-1, type=click.Path(path_type=Path), metavar="[IMAGE ...]")
@click.option("--model", metavar="MODEL", help="model id or model directory (default: the default model)")
@click.option("-q", "--quality", type=float, metavar="QUALITY", help="quality (default: the model's)")
@click.option("--context", type=click.Choice(["grouped", "checkerboard"]), help="context mode (default: the model's)")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
    help="auto: the CPU runs, plus CUDA when present; cpu: the CPU runs; cuda: the CUDA run only (default: auto)",
)
@click.option("--threads", default="1,2", metavar="THREADS", help="comma-separated CPU thread counts, one run each (default: 1,2)")
@click.option(
    "--precision", default="auto", metavar="PRECISION",
    help=f"comma-separated transform precisions, one run each ({', '.join(PRECISIONS)}; default: auto)",
)
@click.option("--repeat", type=int, default=3, metavar="N", help="timed rounds per run, the median is reported (default: 3)")
@click.option(
    "--compare", default=DEFAULT_BENCH_CODECS, metavar="CODECS",
    help=f"comma-separated classical codecs to time on the same image, '' for none (default: {DEFAULT_BENCH_CODECS}; "
    f"available: {','.join(CLASSICAL_CODECS)})",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), metavar="FILE", help="write the full report as JSON here")
def bench_command(
    images: tuple[Path, ...],
    model: str | None,
    quality: float | None,
    context: str | None,
    device: str,
    threads: str,
    precision: str,
    repeat: int,
    compare: str,
    json_path: Path | None,
) -> None:
    prog = f"{PROG} bench"
    bench = _bench_module()
    from cca_codec.base.fileio import atomic_write
    from cca_codec.measure import classical

    try:
        if not images and not bench.DEFAULT_IMAGE.is_file():
            raise UsageError(f"the bundled sample {bench.DEFAULT_IMAGE} is not installed; give an IMAGE")
        arguments = list(images) or [bench.DEFAULT_IMAGE]
        paths = bench.image_paths(arguments)
        label = str(arguments[0]) if len(arguments) == 1 and arguments[0].is_dir() else None
        specs = bench.run_specs(device, thread_counts(threads), precision_names(precision))
        codecs = classical.available(classical.resolve(comma_list(compare)), lambda line: say(f"{prog}: {line}"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            report = bench.bench(paths, model, quality, context, specs, repeat, codecs, label=label)
        if json_path is not None:
            atomic_write(json_path, (json.dumps(report, indent=2) + "\n").encode())
    except CodecError as exc:
        click.echo(f"{prog}: error: {exc}", err=True)
        click.get_current_context().exit(exc.exit_code)
    click.echo(bench.markdown(report))
    if json_path is not None:
        say(f"wrote {json_path}")
