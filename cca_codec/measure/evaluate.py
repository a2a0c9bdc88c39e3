"""Rate-distortion evaluation: real `.cca` files, measured as the anchors are.

    ccacodec eval DIR --model ID|DIR --qualities 1,2,3 \\
        --context grouped,checkerboard --device cpu --limit N --out OUTDIR \\
        --compare jpeg,jpeg420,webp,avif,jxl,heic \\
        --anchor FILE [--anchor FILE ...] [--plot rd.png] [--html report.html]

Every image of DIR (sorted by name; the first N with --limit) is encoded at every quality
and context mode into a `.cca` file, which is read back and decoded. Per image:

* bpp = 8 * file bytes / (W * H): the whole file, header and chunk framing included;
* payload bpp = 8 * (file bytes - container overhead) / (W * H): the tile streams only;
* PSNR-RGB in dB on the 8-bit decoded output (MAX = 255);
* MS-SSIM on RGB (pytorch_msssim, data range 255); undefined (None) for images under
  161 pixels on a side;
* SSIMULACRA2 (cca_codec.image.metrics.ssimulacra2, our NumPy port of libjxl's; 100 = identical,
  about 90 visually lossless, 70 high, 50 medium, 30 low quality); undefined (None) for images
  under 8 pixels on a side; about 0.3 s per 768x512 image on a loaded 2-core CPU;
* encoding and decoding wall time in seconds (`encode_image` and `decode_image` only).

Averages over images per quality follow the anchors (/work/shared/anchors/README.md):
bpp averaged over images, PSNR per image then averaged. One JSON file per context mode
is written in CompressAI's results schema, and a markdown table of the averages and one
of BD-rates against the anchors are printed to stdout.

With --compare, classical codecs (cca_codec.measure.classical) code the same images over their
quality sweeps, measured the same way (no payload-only bpp): one more JSON file per codec.
A codec whose tools are not installed is skipped with a one-line message. BD-rates of our
curves against every compared codec and every anchor are printed and written to
OUTDIR/bd-rate.json; the plot shows all the curves. --html writes all of it as one self-contained
page (:func:`write_html_report`), with 1:1 crops of the first image as each curve codes it.
"""
from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cca_codec import __version__
from cca_codec.base.console import say
from cca_codec.base.errors import UsageError
from cca_codec.base.fileio import atomic_write
from cca_codec.core.checkpoint import LoadedModel, load_model
from cca_codec.core.codec import decode_image, default_context, encode_image
from cca_codec.format.container import container_overhead, read_container
from cca_codec.image.difference import differing_regions
from cca_codec.image.io import SourceImage, find_images, load_image, output_rgb
from cca_codec.image.metrics import MS_SSIM_MIN_SIDE, SSIMULACRA2_MIN_SIDE, bits_per_pixel, fidelity

from . import classical
from .bdrate import load_curve
from .curves import (
    QUALITY_COLUMNS,
    bd_cells,
    bd_table,
    plot_rd,
    quality_rows,
    rd_svg,
    write_bd_table,
)


RESULT_KEYS = (
    "quality", "bpp", "bpp-payload", "psnr-rgb", "ms-ssim-rgb", "ssimulacra2", "encoding_time", "decoding_time",
)
"""Keys of a result's ``results`` object, each a list with one value per quality."""

CLASSICAL_KEYS = tuple(key for key in RESULT_KEYS if key != "bpp-payload")
"""Keys of a classical codec's ``results`` (its file has no container overhead to subtract)."""

_WARMUP_SIDE = 64


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _check_qualities(model: LoadedModel, qualities: Sequence[float]) -> list[float]:
    """Qualities as floats, each one the model codes at (UsageError otherwise)."""
    if not qualities:
        raise UsageError("no qualities to evaluate")
    return [model.check_quality(q) for q in qualities]


def _warm_up(image: SourceImage, model: LoadedModel, quality: float, context: str, device: str) -> None:
    """Encode and decode a small crop once, untimed, so that one-off setup (moving the
    network to the device, building the coding tables) is not counted in the first timing.
    Also rejects a context mode the model lacks before any real work is done."""
    crop = np.ascontiguousarray(image.rgb[:_WARMUP_SIDE, :_WARMUP_SIDE])
    small = SourceImage(rgb=crop, color_mode="rgb", bit_depth=8)
    decode_image(encode_image(small, model, quality=quality, context=context, device=device), model, device=device)


def _image_names(images: Sequence[Path]) -> list[str]:
    """The file names of ``images``, which key the per-image results (UsageError: none, or duplicates)."""
    if not images:
        raise UsageError("no images to evaluate")
    names = [Path(p).name for p in images]
    if len(set(names)) != len(names):
        raise UsageError("image file names must be unique (they key the per-image results)")
    return names


def _empty_record(image: SourceImage, keys: Sequence[str] = RESULT_KEYS) -> dict:
    """Per-image record: size, and one list per measure of ``keys`` but quality (filled in quality order)."""
    record: dict = {"width": image.width, "height": image.height, "file_bytes": []}
    record.update({key: [] for key in keys[1:]})
    return record


def evaluate(
    images: list[Path],
    model: LoadedModel,
    qualities: list[float],
    contexts: list[str],
    device: str = "cpu",
    progress: bool = True,
    workdir: Path | None = None,
) -> dict[str, dict]:
    """Encode and decode every image at every quality and context mode; measure rate and quality.

    Each encoding is written to a `.cca` file (in ``workdir``, where the files are kept,
    else in a temporary directory that is removed afterwards); its size on disk is the
    rate, and the decoder reads the file back. See the module docstring for the measures
    and their units.

    Returns:
        ``{context: result}``, each result in CompressAI's schema::

            {"name": "ccacodec-<model_id>-<context>", "description": str,
             "results": {"quality", "bpp", "bpp-payload", "psnr-rgb" (dB), "ms-ssim-rgb",
                         "ssimulacra2", "encoding_time" (s), "decoding_time" (s)},
             "per_image": {file name: {"width", "height", "file_bytes", "bpp", ...}}}

        where every list has one value per quality, in the order given. In ``results``
        the values are means over images (MS-SSIM and SSIMULACRA2 over the images where
        they are defined, None if defined for none); ``per_image`` holds the same measures
        per image (None where undefined) plus the file sizes in bytes.

    Raises:
        UsageError: no images, duplicate image file names, a quality outside the model's
            range, or an unknown context mode or one the model lacks.
        InputError: an image that cannot be read.
    """
    names = _image_names(images)
    if not contexts or len(set(contexts)) != len(contexts):
        raise UsageError(f"context modes must be given once each, got {contexts}")
    qs = _check_qualities(model, qualities)
    per_image: dict[str, dict[str, dict]] = {ctx: {} for ctx in contexts}
    with tempfile.TemporaryDirectory(prefix="cca-eval-") as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(images) * len(qs) * len(contexts), desc="evaluate", unit="code", file=sys.stderr, disable=not progress)
        with bar:
            for index, (path, name) in enumerate(zip(images, names)):
                image = load_image(path)
                if index == 0:
                    for ctx in contexts:
                        _warm_up(image, model, qs[0], ctx, device)
                for ctx in contexts:
                    record = per_image[ctx][name] = _empty_record(image)
                    for q in qs:
                        bar.set_postfix_str(f"{name} {ctx} q{q:g}")
                        cca_path = folder / f"{index:04d}-{Path(name).stem}-{ctx}-q{q:g}.cca"
                        _measure(image, model, q, ctx, device, cca_path, record)
                        bar.update()
    return {ctx: _result(model, ctx, qs, per_image[ctx], device) for ctx in contexts}


def _measure(image: SourceImage, model: LoadedModel, quality: float, context: str, device: str, cca_path: Path, record: dict) -> None:
    """One encode/write/read/decode round; append its measures to the per-image ``record``."""
    start = time.perf_counter()
    data = encode_image(image, model, quality=quality, context=context, device=device)
    encoding_time = time.perf_counter() - start
    cca_path.write_bytes(data)
    file_bytes = cca_path.stat().st_size
    stored = cca_path.read_bytes()
    start = time.perf_counter()
    decoded = decode_image(stored, model, device=device)
    decoding_time = time.perf_counter() - start
    overhead = container_overhead(read_container(stored))
    record["bpp-payload"].append(bits_per_pixel(file_bytes - overhead, image.width, image.height))
    _record_round(record, image, file_bytes, output_rgb(decoded), encoding_time, decoding_time)


def _record_round(record: dict, image: SourceImage, file_bytes: int, output: np.ndarray, encoding_time: float, decoding_time: float) -> None:
    """Append the measures every codec shares (file size, bpp, PSNR, MS-SSIM, SSIMULACRA2, times) to ``record``."""
    record["file_bytes"].append(file_bytes)
    record["bpp"].append(bits_per_pixel(file_bytes, image.width, image.height))
    measured = fidelity(image.rgb, output)
    record["psnr-rgb"].append(measured.psnr)
    record["ms-ssim-rgb"].append(measured.ms_ssim)
    record["ssimulacra2"].append(measured.ssimulacra2)
    record["encoding_time"].append(encoding_time)
    record["decoding_time"].append(decoding_time)


def _averages(qualities: Sequence[float], per_image: dict[str, dict], keys: Sequence[str]) -> dict[str, list]:
    """Per-quality means over the images of every measure in ``keys`` but quality (None ignored)."""
    records = list(per_image.values())
    averages: dict[str, list] = {"quality": list(qualities)}
    for key in keys[1:]:
        averages[key] = [_mean([r[key][i] for r in records]) for i in range(len(qualities))]
    return averages


_MEASURES = (
    "bpp = 8 * file bytes / (W * H) averaged over images; PSNR-RGB (dB, 8-bit, MAX 255) and MS-SSIM "
    f"(RGB, data range 255, images of at least {MS_SSIM_MIN_SIDE} px a side) and SSIMULACRA2 (libjxl's "
    f"SSIMULACRA 2.1, 100 = identical, images of at least {SSIMULACRA2_MIN_SIDE} px a side) per image, then averaged; "
    "times in seconds per image."
)


def _result(model: LoadedModel, context: str, qualities: list[float], per_image: dict[str, dict], device: str) -> dict:
    """The CompressAI-schema result of one context mode from its per-image records."""
    averages = _averages(qualities, per_image, RESULT_KEYS)
    records = list(per_image.values())
    description = (
        f"ccacodec {__version__}, model {model.model_id} (weights sha256 {model.weights_sha256.hex()[:12]}), "
        f"context {context}, device {device}, images: {len(records)}. {_MEASURES} "
        f"bpp-payload counts tile stream bytes only."
    )
    return {
        "name": f"ccacodec-{model.model_id}-{context}",
        "description": description,
        "results": averages,
        "per_image": per_image,
    }


def evaluate_classical(
    images: list[Path],
    codecs: Sequence[classical.ClassicalCodec],
    progress: bool = True,
    workdir: Path | None = None,
    say: Callable[[str], None] = say,
) -> dict[str, dict]:
    """Code every image with every classical codec over its sweep; measure as :func:`evaluate` does.

    The codecs get the 8-bit RGB pixels our codec codes (a grayscale image as RGB, alpha
    left out). Each compressed file is written (kept in ``workdir`` when given) and decoded
    with the codec's own decoder. A codec that fails on an image is dropped with one line
    through ``say``; the others go on.

    Returns:
        ``{codec key: result}`` in the schema of :func:`evaluate`'s results, with the keys
        :data:`CLASSICAL_KEYS`; ``quality`` holds the codec's own settings (its ``setting``).

    Raises:
        UsageError: no images, or duplicate image file names.
        InputError: an image that cannot be read.
    """
    names = _image_names(images)
    per_image: dict[str, dict[str, dict]] = {codec.key: {} for codec in codecs}
    dropped: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="cca-compare-") as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        total = len(images) * sum(len(codec.qualities) for codec in codecs)
        with tqdm(total=total, desc="compare", unit="code", file=sys.stderr, disable=not progress) as bar:
            for index, (path, name) in enumerate(zip(images, names)):
                image = load_image(path)
                source = classical.write_source_png(image.rgb, Path(tmp) / "source.png")
                for codec in [c for c in codecs if c.key not in dropped]:
                    record = per_image[codec.key][name] = _empty_record(image, CLASSICAL_KEYS)
                    try:
                        _sweep(codec, source, image, folder / f"{index:04d}-{Path(name).stem}-{codec.key}", record, bar)
                    except classical.ToolFailure as exc:
                        say(f"{codec.key} dropped: {name}, {exc}")
                        dropped.add(codec.key)
    return {
        codec.key: _classical_result(codec, per_image[codec.key]) for codec in codecs if codec.key not in dropped
    }


def _sweep(codec: classical.ClassicalCodec, source: classical.Source, image: SourceImage, stem: Path, record: dict, bar: tqdm) -> None:
    """Code ``source`` at every setting of ``codec`` into ``<stem>-q<setting><suffix>``; append the
    measures to ``record``. Raises ToolFailure naming the setting that failed."""
    for q in codec.qualities:
        bar.set_postfix_str(f"{stem.name} {q:g}")
        try:
            coded = codec.run(source, q, stem.with_name(f"{stem.name}-q{q:g}{codec.suffix}"))
        except classical.ToolFailure as exc:
            raise classical.ToolFailure(f"{codec.setting} {q:g}: {exc}") from None
        _record_round(record, image, coded.file_bytes, coded.rgb, coded.encoding_time, coded.decoding_time)
        bar.update()


def _classical_result(codec: classical.ClassicalCodec, per_image: dict[str, dict]) -> dict:
    """The CompressAI-schema result of a classical codec from its per-image records."""
    description = (
        f"{codec.version()}, {codec.setting} swept, images: {len(per_image)}. {_MEASURES} "
        f"Times of command-line tools include starting the process."
    )
    return {
        "name": codec.name,
        "description": description,
        "results": _averages(codec.qualities, per_image, CLASSICAL_KEYS),
        "per_image": per_image,
    }


def write_results(results: dict[str, dict], out_dir: Path) -> list[Path]:
    """Write each context's result to ``out_dir/<result name>.json`` (directory created).

    Returns the paths written, in the order of ``results``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for result in results.values():
        path = out / f"{result['name']}.json"
        atomic_write(path, (json.dumps(result, indent=2) + "\n").encode())
        paths.append(path)
    return paths


@dataclass
class FolderEvaluation:
    """What :func:`evaluate_folder` measured: our curves (``results``, one per context mode), the
    classical codecs' (``compared``), the BD-rate rows (empty without anchors or codecs) and the
    files written, in order."""

    results: dict[str, dict]
    compared: dict[str, dict]
    bd_rows: list[dict]
    written: list[Path]


def evaluate_folder(
    directory: Path,
    out: Path,
    *,
    model: str | None = None,
    qualities: Sequence[float] | None = None,
    contexts: Sequence[str] | None = None,
    codecs: Sequence[str] = (),
    anchors: Sequence[Path] = (),
    limit: int | None = None,
    device: str = "cpu",
    plot: Path | None = None,
    html: Path | None = None,
    workdir: Path | None = None,
    progress: bool = True,
    say: Callable[[str], None] = say,
) -> FolderEvaluation:
    """``ccacodec eval``: the images of ``directory`` (the first ``limit``) through model ``model``
    (id or directory; default: the default model) at ``qualities`` (default: its integer
    qualities) and ``contexts`` (default: its default mode), the classical ``codecs`` that are
    installed (the others skipped with a line through ``say``), results JSON and BD-rate table in
    ``out``, an RD plot (``plot``) and an HTML page (``html``) when asked.

    Raises:
        UsageError: an anchor file that does not read as a curve, a missing or empty folder, a
        quality the model does not code, an unknown codec or context mode.
    """
    for anchor in anchors:
        try:
            load_curve(anchor)
        except (OSError, ValueError) as exc:
            raise UsageError(f"anchor {anchor}: {exc}") from None
    images = find_images(directory, limit)
    available = classical.available(classical.resolve(list(codecs)), say)
    loaded = load_model(model)
    qs = list(qualities) if qualities else [float(q.quality) for q in loaded.qualities]
    modes = list(contexts) if contexts else [default_context(loaded)]
    results = evaluate(images, loaded, qs, modes, device=device, progress=progress, workdir=workdir)
    compared = evaluate_classical(images, available, progress=progress, workdir=workdir, say=say) if available else {}
    bd_rows = bd_table(results, list(anchors), compared) if anchors or compared else []
    written = write_results(results, out) + write_results(compared, out)
    if bd_rows:
        written.append(write_bd_table(bd_rows, out))
    if plot is not None:
        plot_rd(results, list(anchors), plot, compared)
        written.append(plot)
    if html is not None:
        written.append(write_html_report(html, results, list(anchors), compared, available, images[0], loaded, device=device))
    return FolderEvaluation(results, compared, bd_rows, written)


STRIP_SIDE = 256
"""Side in pixels of the 1:1 crops in the eval page's strip."""


def write_html_report(
    path: Path,
    results: dict[str, dict],
    anchor_paths: Sequence[Path],
    compared: dict[str, dict],
    codecs: Sequence[classical.ClassicalCodec],
    image_path: Path,
    model: LoadedModel,
    device: str = "cpu",
) -> Path:
    """The dataset report as one self-contained HTML file (``eval --html``).

    It holds the RD plot of every curve and anchor (inline SVG), the per-quality table of our curves
    and the compared codecs, the BD-rate table (when there is anything to compare with), and a strip
    of 1:1 crops of ``image_path`` (one of the evaluated images) as each curve codes it at a middle
    rate: ours at the middle quality, each compared codec at the setting of its sweep whose bpp on that
    image is closest to ours. The crop is where those decodings differ most.
    """
    from .report import StripPicture, html_table, write_eval_page

    image, name = load_image(image_path), Path(image_path).name
    first = next(iter(results.values()))
    middle = len(first["results"]["quality"]) // 2
    our_bpp = first["per_image"][name]["bpp"][middle]
    coded: list[tuple[str, str, float, float, np.ndarray]] = []
    for context, result in results.items():
        q = result["results"]["quality"][middle]
        data = encode_image(image, model, quality=q, context=context, device=device)
        per = result["per_image"][name]
        coded.append((result["name"], f"quality {q:g}", per["bpp"][middle], per["psnr-rgb"][middle], output_rgb(decode_image(data, model, device=device))))
    with tempfile.TemporaryDirectory(prefix="cca-eval-html-") as tmp:
        source = classical.write_source_png(image.rgb, Path(tmp) / "source.png")
        for codec in codecs:
            if codec.key not in compared:
                continue
            per = compared[codec.key]["per_image"][name]
            j = int(np.argmin([abs(b - our_bpp) for b in per["bpp"]]))
            setting = codec.qualities[j]
            try:
                rgb = codec.run(source, setting, Path(tmp) / f"strip{codec.suffix}").rgb
            except classical.ToolFailure as exc:
                say(f"strip: {codec.key} skipped: {exc}")
                continue
            coded.append((codec.name, f"{codec.setting_name} {setting:g}", per["bpp"][j], per["psnr-rgb"][j], rgb))
    side = min(STRIP_SIDE, image.width, image.height)
    (left, top, side), _ = differing_regions(image.rgb, [c[4] for c in coded], 1, side)[0]

    def png(rgb: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(rgb[top : top + side, left : left + side])).save(buffer, format="PNG")
        return buffer.getvalue()

    strip = [StripPicture("original", "", None, None, png(image.rgb))]
    strip += [StripPicture(label, setting, bpp, psnr_db, png(rgb)) for label, setting, bpp, psnr_db, rgb in coded]
    by_name = {result["name"]: result for result in (*results.values(), *compared.values())}
    tables = [("Per quality (means over the images)", html_table(["curve", *QUALITY_COLUMNS], quality_rows(by_name)))]
    if anchor_paths or compared:
        bd_rows = [bd_cells(row) for row in bd_table(results, anchor_paths, compared)]
        tables.append(("BD-rate (negative: ours needs fewer bits)", html_table(
            ["curve", "against", "BD-rate (%)", "BD-PSNR (dB)", "note"], bd_rows
        )))
    images = len(first["per_image"])
    description = (
        f"ccacodec {__version__}, model {model.model_id} (weights sha256 {model.weights_sha256.hex()[:12]}), "
        f"{images} image{'s' if images != 1 else ''}, device {device}. {_MEASURES}"
    )
    return write_eval_page(
        path, f"ccacodec eval: {model.model_id}", description, rd_svg(results, anchor_paths, compared), tables,
        f"{name} at a middle rate, 1:1 crops ({side}x{side} px at ({left}, {top}), where the decodings differ most)", strip,
    )
