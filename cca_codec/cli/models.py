"""``ccacodec models`` (the installed models) and ``import-official`` (the CCA authors' checkpoints
as a model). Here: the options and what is printed; what a model directory holds is read by
:func:`cca_codec.core.checkpoint.describe_model_dir`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from .common import say, torch_modules


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the list as one JSON object.")
def models(as_json: bool) -> None:
    """List the installed models and where they were searched for."""
    checkpoint, _ = torch_modules()
    search_path = [str(p) for p in checkpoint.model_search_path()]
    entries = [checkpoint.describe_model_dir(model_id, directory) for model_id, directory in checkpoint.available_models().items()]
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


@click.command("import-official")
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
def import_official(checkpoints: tuple[str, ...], lambdas: tuple[float, ...], model_id: str | None, out_dir: str | None) -> None:
    """Install the CCA authors' published checkpoints as one model.

    Each CKPT (a .pth.tar from LabShuHangGU/CCA) is followed by its --lambda:

      ccacodec import-official cca_0.3.pth.tar --lambda 0.3 cca_0.85.pth.tar --lambda 0.85

    The model has one network per lambda and codes at those qualities only.
    """
    if len(checkpoints) != len(lambdas):
        raise click.UsageError(f"give one --lambda per checkpoint ({len(checkpoints)} checkpoints, {len(lambdas)} --lambda)")
    torch_modules()  # torch and CompressAI, imported without their deprecation warnings
    from cca_codec.modeltools import official

    directory = official.import_official(
        [(Path(c), lam) for c, lam in zip(checkpoints, lambdas)], model_id or official.DEFAULT_OFFICIAL_MODEL_ID, out_dir
    )
    say(f"installed model {directory.name} in {directory}")
