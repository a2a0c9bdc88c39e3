"""Commands that hand their arguments to an argparse ``main(argv, prog)`` elsewhere: ``ccacodec
train`` (:mod:`cca_codec.training.train`, which ``torchrun -m`` also runs) and ``ccacodec train-bg``
(:mod:`cca_codec.training.background`). Each is registered by :func:`passthrough` with a function
that imports its module, so the import happens only when the command runs."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from types import ModuleType

import click

from .common import PROG


class VerbatimCommand(click.Command):
    """A command whose arguments reach its callback (as `args`) exactly as typed: click's own
    parser would drop a `--`, which the argparse side needs (`train-bg start -- FLAGS`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.params["args"] = tuple(args)
        return []


def passthrough(name: str, summary: str, module: Callable[[], ModuleType]) -> click.Command:
    """The command `ccacodec NAME ...`: its arguments, --help and `--` included, go verbatim to the
    `main(argv, prog)` of the module that `module()` imports and returns."""

    @click.command(name, cls=VerbatimCommand, help=summary, add_help_option=False)
    def command(args: tuple[str, ...]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            target = module()
        target.main(list(args), prog=f"{PROG} {name}")

    return command


def _train_module() -> ModuleType:
    from cca_codec.training import train as module

    return module


def _background_module() -> ModuleType:
    from cca_codec.training import background as module

    return module


train = passthrough("train", "Train a model with the CCA loss (see `ccacodec train --help`).", _train_module)
train_bg = passthrough(
    "train-bg", "The background training run: start, status, pause, resume, stop, finish (see `ccacodec train-bg --help`).",
    _background_module,
)
