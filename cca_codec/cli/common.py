"""What the commands of ``ccacodec`` share: error reporting, names in messages, the options that
several commands take, and importing the torch side only when a command needs it."""
from __future__ import annotations

import os
import sys
import traceback
import warnings
from types import ModuleType

import click

from cca_codec.base.console import say
from cca_codec.base.errors import CodecError, one_line
from cca_codec.base.fileio import STDIN, STDOUT
from cca_codec.format.container import DEFAULT_MAX_PIXELS
from cca_codec.format.contents import CONTEXT_MODES

__all__ = ["say"]  # re-exported: the commands print their human lines with it

PROG = "ccacodec"
EXIT_OK = 0
EXIT_INTERNAL = CodecError.exit_code
DEBUG_ENV = "CCACODEC_DEBUG"
STDIN_LABEL = "standard input"
STDOUT_LABEL = "standard output"


# ------------------------------------------------------------------------------ messages


def report(exc: Exception, label: str | None = None) -> int:
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
    say(f"{PROG}: {kind}: {message}")
    return code


def in_label(path: str) -> str:
    """How an input is named in messages ("standard input" for "-")."""
    return STDIN_LABEL if path == STDIN else path


def out_label(path: str) -> str:
    """How an output is named in messages ("standard output" for "-")."""
    return STDOUT_LABEL if path == STDOUT else path


def torch_modules() -> tuple[ModuleType, ModuleType]:
    """Import and return ``(checkpoint, codec)``, the modules that need torch.

    Imported only by the commands that use them, so ``--help`` and ``info`` stay fast.
    Deprecation warnings that dependencies emit while being imported are not shown.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        from cca_codec.core import checkpoint, codec
    return checkpoint, codec


# ------------------------------------------------------------------------------- options

PRECISIONS = ("auto", "bf16", "fp32-fast", "fp32")
"""cca_codec.core.precision.PRECISIONS (not imported: it needs torch; a test checks they agree)."""
CLASSICAL_CODECS = ("jpeg", "jpeg420", "webp", "avifpil", "cwebp", "avif", "jxl", "heic")
"""The keys of cca_codec.measure.classical.CODECS, for help texts (a test checks they agree)."""

output_option = click.option(
    "-o", "--output", metavar="OUT|-", help="Output file, '-' for standard output (one input only)."
)
output_dir_option = click.option(
    "-d", "--output-dir", metavar="DIR", type=click.Path(file_okay=False),
    help="Directory for the outputs (created if needed); default: next to each input.",
)
model_option = click.option(
    "--model", metavar="ID|DIR", help="Model id (looked up on the model search path) or model directory."
)
device_option = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
    help="Where the network runs.",
)
precision_option = click.option(
    "--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
    help="How the image transforms run: bf16 (on a CPU with native bf16), fp32-fast (float32 through oneDNN, CPU), "
    "fp32 (exact, the same pixels on every CPU); auto: bf16 where native, else fp32-fast on the CPU, else fp32.",
)
threads_option = click.option(
    "--threads", type=click.IntRange(min=1), metavar="N", help="CPU threads torch may use (default: torch's choice)."
)
no_overwrite_option = click.option("--no-overwrite", is_flag=True, help="Fail instead of replacing an existing output.")
quiet_option = click.option("--quiet", is_flag=True, help="No statistics, notes or progress bar on stderr.")
jobs_option = click.option(
    "-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
    help="Files processed at the same time, each in its own process (default: one after the other).",
)
effort_option = click.option(
    "--effort", type=click.IntRange(1, 9), default=1, show_default=True, metavar="1..9",
    help="Encoder effort: above 1 the latents are optimized for each image first (slower; smaller files for the "
    "same quality; the same decoder reads them).",
)
max_pixels_option = click.option(
    "--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True, metavar="N",
    help="Refuse images whose width*height exceeds N (decompression-bomb guard).",
)
context_option = click.option(
    "--context", type=click.Choice(CONTEXT_MODES), help="Context mode; default: checkerboard when the model has a spatial context."
)
quality_option = click.option(
    "-q", "--quality", type=float, help="Quality, 1 .. number of the model's qualities (may be fractional); default: the model's."
)
