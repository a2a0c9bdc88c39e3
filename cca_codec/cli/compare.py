"""``ccacodec compare``: an HTML report of ccacodec beside classical codecs at equal file size
(:mod:`cca_codec.measure.compare`). Here: the options and what is printed."""
from __future__ import annotations

import json
from pathlib import Path

import click

from cca_codec.base.runtime import set_torch_threads

from .common import (
    PROG,
    context_option,
    device_option,
    effort_option,
    max_pixels_option,
    model_option,
    precision_option,
    quiet_option,
    say,
    threads_option,
    torch_modules,
)


@click.command()
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
@context_option
@effort_option
@model_option
@device_option
@precision_option
@threads_option
@max_pixels_option
@quiet_option
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
    set_torch_threads(threads)
    checkpoint, codec = torch_modules()
    from cca_codec.core.ratecontrol import Target
    from cca_codec.measure import classical
    from cca_codec.measure.compare import DEFAULT_CODECS, compare_images

    target = Target.from_options(bpp=bpp, size=size, quality=quality)
    keys = [key.strip() for key in codecs.split(",") if key.strip()] if codecs is not None else list(DEFAULT_CODECS)
    compared = classical.available(classical.resolve(keys), lambda line: None if quiet else say(f"{PROG}: {line}"))
    codec.resolve_device(device)
    loaded = checkpoint.load_model(model)
    reports = compare_images(
        [Path(p) for p in inputs], Path(out_dir), loaded, compared, quality=quality, target=target, context=context,
        device=device, precision=precision, effort=effort, max_pixels=max_pixels, say=lambda line: say(f"{PROG}: {line}"),
    )
    for report in reports:
        if as_json:
            click.echo(json.dumps(report.to_dict()))
        if not quiet:
            ours = report.codecs[0]
            say(f"{report.image}: {ours.bytes} bytes ({ours.bpp:.3f} bpp); " + ", ".join(
                f"{v.name} {v.psnr:.2f} dB" for v in report.codecs
            ))
    if not quiet:
        say(f"wrote {Path(out_dir) / 'index.html'}")
