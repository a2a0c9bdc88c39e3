"""``ccacodec encode-dataset`` and ``decode-dataset``: whole folder trees on Ray Data
(:mod:`cca_codec.dataset`). Here: the options, the progress bar, and the summary printed."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import click
from tqdm import tqdm

from .common import (
    PROG,
    context_option,
    effort_option,
    max_pixels_option,
    model_option,
    quality_option,
    say,
    torch_modules,
)


def dataset_options(command: Callable[..., None]) -> Callable[..., None]:
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
        max_pixels_option,
        click.option("--quiet", is_flag=True, help="No progress bar and no summary line unless a file failed."),
        click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def dataset_module() -> ModuleType:
    """Import and return :mod:`cca_codec.dataset` (torch and CompressAI without their deprecation warnings)."""
    torch_modules()
    from cca_codec import dataset

    return dataset


def ray_options(dataset: ModuleType, params: dict[str, Any]) -> Any:
    """The ``RayOptions`` of the engine options in ``params``."""
    if params["address"] is not None and params["num_cpus"] is not None:
        raise click.UsageError("--num-cpus sizes a local Ray instance; it cannot be combined with --address")
    return dataset.RayOptions(
        address=params["address"], num_cpus=params["num_cpus"], workers=params["workers"],
        cpus_per_worker=params["cpus_per_worker"], gpus_per_worker=params["gpus_per_worker"], batch_size=params["batch_size"],
    )


def run_dataset(run: Callable[..., Any], quiet: bool, as_json: bool) -> None:
    """Call ``run(progress=...)`` (an ``encode_dataset`` / ``decode_dataset`` call), then report:
    each failed file on one line, a summary line (or ``--json``), the first failure's exit code."""
    with tqdm(disable=quiet or not sys.stderr.isatty(), file=sys.stderr, unit="file", leave=False) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        summary = run(progress=progress)
    for failure in summary.failures:
        say(f"{PROG}: error: {failure['error']}")
    if summary.failures or not quiet:
        say(
            f"{summary.total} files: {summary.coded} coded, {summary.skipped} done before, {summary.failed} failed; "
            f"{summary.images_per_second:.2f} images/s; manifest {summary.manifest}"
        )
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
    click.get_current_context().exit(summary.exit_code)


@click.command("encode-dataset")
@click.argument("src", metavar="SRC")
@click.argument("dst", metavar="DST")
@quality_option
@context_option
@click.option("--tile", type=click.IntRange(min=0), metavar="N", help="Tiles of NxN pixels (as for encode); default: automatic.")
@effort_option
@model_option
@dataset_options
def encode_dataset(src: str, dst: str, **params: Any) -> None:
    """Encode every image under SRC to .cca files under DST, on a Ray cluster.

    DST mirrors SRC's folders (SRC/a/b.png -> DST/a/b.cca). DST/manifest.jsonl holds one
    record per file (sizes, bpp, settings, or the error); a failing file never stops the
    others, and a rerun skips the files already coded with the same settings. Exit code:
    that of the first failed file, else 0.
    """
    dataset = dataset_module()
    options = ray_options(dataset, params)

    def run(progress: Callable[[int, int], None]) -> Any:
        return dataset.encode_dataset(
            src, dst, quality=params["quality"], context=params["context"], model=params["model"], tile=params["tile"],
            effort=params["effort"], max_pixels=params["max_pixels"], ray_options=options, progress=progress,
        )

    run_dataset(run, params["quiet"], params["as_json"])


@click.command("decode-dataset")
@click.argument("src", metavar="SRC")
@click.argument("dst", metavar="DST")
@model_option
@dataset_options
def decode_dataset(src: str, dst: str, **params: Any) -> None:
    """Decode every .cca file under SRC to PNG under DST, on a Ray cluster.

    As encode-dataset (SRC/a/b.cca -> DST/a/b.png, DST/manifest.jsonl, reruns skip what is
    done). Each file is decoded with the model it names unless --model is given.
    """
    dataset = dataset_module()
    options = ray_options(dataset, params)

    def run(progress: Callable[[int, int], None]) -> Any:
        return dataset.decode_dataset(
            src, dst, model=params["model"], max_pixels=params["max_pixels"], ray_options=options, progress=progress
        )

    run_dataset(run, params["quiet"], params["as_json"])
