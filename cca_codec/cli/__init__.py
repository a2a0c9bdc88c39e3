"""The ``ccacodec`` command line: ``encode``, ``decode``, ``info`` (:mod:`.codec`), ``encode-dataset``
and ``decode-dataset`` (whole folder trees on Ray Data, :mod:`.datasets`), ``compare`` (an HTML
report beside classical codecs at equal file size, :mod:`.compare`), ``models`` and
``import-official`` (:mod:`.models`), ``eval`` and ``bench`` (:mod:`.tools`), ``train`` and
``train-bg`` (handed to the training modules, :mod:`.passthrough`). Each module parses its
command's arguments and prints; the work is done by the library (mostly :mod:`cca_codec.core.files`
and :mod:`cca_codec.core.batch`).

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

import gc
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import click

from cca_codec import __version__
from cca_codec.base import runtime
from cca_codec.base.errors import EXIT_INTERRUPTED

from . import codec, compare, datasets, models, passthrough, tools
from .common import EXIT_OK, PROG, report, say


class CodecGroup(click.Group):
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
            say(f"{PROG}: interrupted")
            code = EXIT_INTERRUPTED
        except Exception as exc:  # noqa: BLE001 - every error becomes one line and an exit code
            code = report(exc)
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


@click.group(cls=CodecGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
    help="Show the versions of ccacodec, torch and constriction, and exit.",
)
def cli() -> None:
    """ccacodec: a learned image codec writing range-coded .cca files."""


for _command in (
    codec.encode, codec.decode, codec.info, datasets.encode_dataset, datasets.decode_dataset, compare.compare,
    models.models, models.import_official, tools.eval_command, tools.bench_command, passthrough.train,
    passthrough.train_bg,
):
    cli.add_command(_command)


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
