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
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tqdm import tqdm

from cca_codec import __version__
from cca_codec.base.console import say
from cca_codec.base.errors import UsageError
from cca_codec.base.fileio import atomic_write
from cca_codec.core.checkpoint import LoadedModel
from cca_codec.core.codec import decode_image, encode_image
from cca_codec.format.container import container_overhead, read_container
from cca_codec.image.io import IMAGE_SUFFIXES, DecodedImage, SourceImage, load_image
from cca_codec.image.metrics import MS_SSIM_MIN_SIDE, SSIMULACRA2_MIN_SIDE, bits_per_pixel, fidelity

from . import classical
from .bdrate import bd_psnr, bd_rate, load_curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure


RESULT_KEYS = (
    "quality", "bpp", "bpp-payload", "psnr-rgb", "ms-ssim-rgb", "ssimulacra2", "encoding_time", "decoding_time",
)
"""Keys of a result's ``results`` object, each a list with one value per quality."""

CLASSICAL_KEYS = tuple(key for key in RESULT_KEYS if key != "bpp-payload")
"""Keys of a classical codec's ``results`` (its file has no container overhead to subtract)."""

BD_FILE = "bd-rate.json"
"""Name of the BD-rate table written next to the results."""

_WARMUP_SIDE = 64


def output_rgb(decoded: DecodedImage) -> np.ndarray:
    """(H, W, 3) uint8 pixels of the image as written out (gray: channel 0 replicated)."""
    if decoded.color_mode == "gray":
        return np.repeat(decoded.rgb[..., :1], 3, axis=2)
    return decoded.rgb


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


Curve = tuple[str, "str | None", list, list]
"""A reference curve: (name, its file or None when measured in this run, bpp, PSNR-RGB in dB)."""


def reference_curves(anchor_paths: Sequence[Path], compared: dict[str, dict] | None = None) -> list[Curve]:
    """The curves ours are compared with: the compared codecs' results, then the anchor files.

    Raises:
        ValueError, OSError: an anchor file that cannot be read as a results JSON.
    """
    measured: list[Curve] = [
        (r["name"], None, r["results"]["bpp"], r["results"]["psnr-rgb"]) for r in (compared or {}).values()
    ]
    anchors: list[Curve] = []
    for path in anchor_paths:
        name, bpp, psnr_db = load_curve(path)
        anchors.append((name, str(path), bpp, psnr_db))
    return measured + anchors


def write_bd_table(rows: list[dict], out_dir: Path) -> Path:
    """Write the rows of :func:`bd_table` to ``out_dir/bd-rate.json``; returns its path."""
    document = {
        "description": "Bjontegaard delta rate (%, negative = our curve needs fewer bits) and delta PSNR "
        "(dB, positive = our curve is better) of each of our curves against each reference curve, "
        "on bpp and PSNR-RGB; anchor_file is null for codecs measured in the same run.",
        "rows": rows,
    }
    path = Path(out_dir) / BD_FILE
    atomic_write(path, (json.dumps(document, indent=2) + "\n").encode())
    return path


def bd_table(results: dict[str, dict], anchor_paths: Sequence[Path], compared: dict[str, dict] | None = None) -> list[dict]:
    """BD-rate and BD-PSNR of each of our curves (bpp, PSNR-RGB) against each compared codec's
    curve (:func:`evaluate_classical`) and each anchor file.

    Returns one row per (context, reference): ``{"context", "curve", "anchor" (the reference
    curve's name), "anchor_file" (None for a codec measured in this run), "bd_rate" (%,
    negative = we need fewer bits), "bd_psnr" (dB, positive = we are better), "note"}``.
    Where a measure cannot be computed (the curves do not overlap, or a curve has fewer
    than 3 points) its value is None and ``note`` says why.

    Raises:
        ValueError, OSError: an anchor file that cannot be read as a results JSON.
    """
    references = reference_curves(anchor_paths, compared)
    rows = []
    for context, result in results.items():
        ours = (result["results"]["bpp"], result["results"]["psnr-rgb"])
        for name, path, bpp, psnr_db in references:
            row: dict = {"context": context, "curve": result["name"], "anchor": name, "anchor_file": path}
            notes = []
            for key, measure in (("bd_rate", bd_rate), ("bd_psnr", bd_psnr)):
                try:
                    row[key] = measure(bpp, psnr_db, *ours)
                except ValueError as exc:
                    row[key] = None
                    notes.append(f"{key}: {exc}")
            row["note"] = "; ".join(notes) or None
            rows.append(row)
    return rows


def plot_rd(results: dict[str, dict], anchor_paths: Sequence[Path], path: Path, compared: dict[str, dict] | None = None) -> None:
    """Save the rate-distortion plot of :func:`rd_figure` (PNG, or any format matplotlib infers from ``path``)."""
    fig = rd_figure(results, anchor_paths, compared)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def rd_svg(results: dict[str, dict], anchor_paths: Sequence[Path], compared: dict[str, dict] | None = None) -> str:
    """The rate-distortion plot of :func:`rd_figure` as an SVG document."""
    buffer = io.StringIO()
    rd_figure(results, anchor_paths, compared).savefig(buffer, format="svg")
    return buffer.getvalue()


def rd_figure(results: dict[str, dict], anchor_paths: Sequence[Path], compared: dict[str, dict] | None = None) -> Figure:
    """A rate-distortion plot: x = bpp, y = PSNR-RGB (dB); our curves solid with markers, compared
    codecs dash-dotted, anchors dashed. The view spans our bitrates (the others clipped to it) so
    that our curves are not squeezed."""
    from matplotlib.figure import Figure  # the optional "eval" extra; Figure draws with Agg, no pyplot state

    fig = Figure(figsize=(8, 6), dpi=120)
    ax = fig.subplots()
    ours = [(r["name"], r["results"]["bpp"], r["results"]["psnr-rgb"]) for r in results.values()]
    references = reference_curves(anchor_paths, compared)
    x_max = 1.15 * max(max(bpp) for _, bpp, _ in ours)
    visible: list[float] = []
    for name, bpp, psnr_db in ours:
        order = np.argsort(bpp)
        ax.plot(np.asarray(bpp)[order], np.asarray(psnr_db)[order], "-o", linewidth=2, label=name)
        visible.extend(psnr_db)
    for name, source, bpp, psnr_db in references:
        order = np.argsort(bpp)
        x, y = np.asarray(bpp)[order], np.asarray(psnr_db)[order]
        line, marker, size = ("--", ".", 6.0) if source is not None else ("-.", "s", 3.5)
        ax.plot(x, y, line, marker=marker, markersize=size, linewidth=1.2, label=name)
        visible.extend(y[x <= x_max])
        if x[0] <= x_max < x[-1]:  # where the line leaves the view
            visible.append(float(np.interp(x_max, x, y)))
    finite = [p for p in visible if math.isfinite(p)]
    margin = 0.05 * (max(finite) - min(finite)) + 0.5
    ax.set_xlim(0.0, x_max)
    ax.set_ylim(min(finite) - margin, max(finite) + margin)
    images = len(next(iter(results.values()))["per_image"])
    ax.set_title(f"Rate-distortion, {images} image{'s' if images != 1 else ''} (PSNR on 8-bit RGB)")
    ax.set_xlabel("bits per pixel (whole file)")
    ax.set_ylabel("PSNR-RGB (dB)")
    ax.grid(True, alpha=0.4)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(results: dict[str, dict], label: str = "context") -> str:
    """The per-quality averages of every result (context mode, or compared codec: ``label``
    names the first column) as one markdown table; payload bpp is n/a where not measured."""
    lines = [f"| {label} | " + " | ".join(_QUALITY_COLUMNS) + " |", "|---|" + "---:|" * len(_QUALITY_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in _quality_rows(results)]
    return "\n".join(lines)


_QUALITY_COLUMNS = ("quality", "bpp", "payload bpp", "PSNR-RGB (dB)", "MS-SSIM", "SSIMULACRA2", "enc (s)", "dec (s)")
"""The per-quality table's columns after the first (the curve)."""


def _quality_rows(results: dict[str, dict]) -> list[list[str]]:
    """The per-quality averages of every result as table cells: its key (the label), then _QUALITY_COLUMNS."""
    rows = []
    for key, result in results.items():
        r = result["results"]
        payload = r.get("bpp-payload", [None] * len(r["quality"]))
        for i, q in enumerate(r["quality"]):
            rows.append([
                key, f"{q:g}", _fmt(r["bpp"][i], 4), _fmt(payload[i], 4), _fmt(r["psnr-rgb"][i], 2),
                _fmt(r["ms-ssim-rgb"][i], 4), _fmt(r["ssimulacra2"][i], 2), _fmt(r["encoding_time"][i], 3),
                _fmt(r["decoding_time"][i], 3),
            ])
    return rows


def markdown_bd_table(rows: list[dict]) -> str:
    """Rows of :func:`bd_table` as a markdown table."""
    lines = ["| curve | anchor | BD-rate (%) | BD-PSNR (dB) | note |", "|---|---|---:|---:|---|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in map(_bd_cells, rows)]
    return "\n".join(lines)


def _bd_cells(row: dict) -> list[str]:
    """A row of :func:`bd_table` as table cells: curve, anchor, BD-rate, BD-PSNR, note."""
    rate = "n/a" if row["bd_rate"] is None else f"{row['bd_rate']:+.2f}"
    gain = "n/a" if row["bd_psnr"] is None else f"{row['bd_psnr']:+.3f}"
    return [row["curve"], row["anchor"], rate, gain, row["note"] or ""]


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
    from .compare import differing_regions
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
    tables = [("Per quality (means over the images)", html_table(["curve", *_QUALITY_COLUMNS], _quality_rows(by_name)))]
    if anchor_paths or compared:
        bd_rows = [_bd_cells(row) for row in bd_table(results, anchor_paths, compared)]
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


def find_images(directory: Path, limit: int | None = None) -> list[Path]:
    """Image files directly in ``directory`` (by suffix, sorted by name), the first ``limit``."""
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    found = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise UsageError(f"no images ({' '.join(sorted(IMAGE_SUFFIXES))}) in {directory}")
    return found[:limit] if limit is not None else found
