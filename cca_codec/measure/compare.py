"""Side by side at equal file size: ccacodec and classical codecs on the same photographs.

    ccacodec compare photo.png --out report/ [--quality Q | --bpp B | --size BYTES] [--codecs jpeg,webp,avif,jxl]

For each image, ccacodec codes it first (at a quality, or by rate control at a bpp or file size);
then every compared codec (:mod:`cca_codec.measure.classical`) is coded at the setting whose file comes
closest to ccacodec's bytes, found by bisection over the codec's setting range on real encodings
(``SIZE_TOLERANCE``: a match further off than that is reported with the reason, e.g. the codec's
smallest file is larger). Each file is decoded by its own decoder and measured as ``ccacodec eval``
measures: bpp from the file size, PSNR-RGB, MS-SSIM and SSIMULACRA2 against the 8-bit original,
and the wall seconds of one encode and one decode at the chosen setting.

The report folder holds, per image, the original, every coded file and its decoding as PNG, crops of
the regions where the codecs differ most (:func:`~cca_codec.image.difference.differing_regions`), and ``index.html``
(:mod:`cca_codec.measure.report`), which opens offline. It is built in a temporary sibling folder and moved
into place at the end, so an interrupted run leaves no half report.

    records = compare_images([Path("photo.png")], Path("report"), load_model(), classical.resolve(["jpeg", "webp"]))
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from cca_codec.base.errors import InputError, UsageError
from cca_codec.core.checkpoint import LoadedModel
from cca_codec.core.codec import decode_image
from cca_codec.core.files import EncodeOptions, check_options, encode
from cca_codec.core.ratecontrol import Target
from cca_codec.image.difference import differing_regions
from cca_codec.image.io import SourceImage, load_image
from cca_codec.image.metrics import bits_per_pixel, fidelity

from . import classical
from cca_codec.image.io import output_rgb
from .report import ZOOM, ImageReport, Region, Version, write_compare_page

SIZE_TOLERANCE = 0.03
"""A compared codec's file matches ccacodec's when its size is within 3 % of it."""
STOP_TOLERANCE = 0.005
"""The bisection stops early once a probe is within 0.5 % of the target size."""
MAX_PROBES = 16
"""Encodes a size search may spend on one codec and image, the two ends of the range included."""
DEFAULT_CODECS = ("jpeg", "webp", "avif", "jxl")
"""What ``compare`` sets beside ccacodec when ``--codecs`` is not given (missing tools are skipped)."""
REGIONS = 2
"""Crops per image, at the places where the codecs differ most."""
CROP_SIDE = 192
"""Side of a 1:1 crop in pixels (smaller images: their short side)."""
REPORT_FILE = "report.json"
"""The records, beside index.html; its presence marks a folder as a report ``compare`` may replace."""
OURS = "ccacodec"
"""Name of our own entry among an image's codecs."""


def compare_images(
    images: Sequence[Path],
    out_dir: Path,
    model: LoadedModel,
    codecs: Sequence[classical.ClassicalCodec],
    *,
    quality: float | None = None,
    target: Target | None = None,
    context: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    effort: int = 1,
    max_pixels: int | None = None,
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> list[ImageReport]:
    """Code every image with ccacodec and, at matched size, with each of ``codecs``; write the report.

    ``quality`` or ``target`` (a bpp or size :class:`Target`) chooses ccacodec's rate (default: the
    model's default quality); ``effort`` is its encoder effort (1..9). A compared codec that fails on an image is reported through ``say`` and
    in the record's ``failures``; the others go on. The report (``index.html``, ``report.json`` and the
    files) replaces ``out_dir`` only when complete.

    Raises:
        UsageError: no images, a quality out of range, a PSNR target, or duplicate image names.
        InputError: an unreadable image, or ``out_dir`` exists and is not a ccacodec report.
    """
    if not images:
        raise UsageError("no images to compare")
    if target is not None and target.kind == "psnr":
        raise UsageError("compare matches file sizes: give a quality, a bpp or a size")
    stems = _folder_names(images)
    options = EncodeOptions(quality=quality, target=target, context=context, device=device, precision=precision, effort=effort)
    checked = check_options(model, options)
    options = replace(options, quality=checked.quality, context=checked.context)
    out = Path(out_dir)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        reports = []
        for path, stem in zip(images, stems):
            image = load_image(path, max_pixels=max_pixels, name=str(path))
            folder = building / stem
            folder.mkdir()
            report = _compare_one(image, str(path), folder, stem, model, codecs, options, say)
            reports.append(report)
        write_compare_page(reports, building)
        document = {"images": [r.to_dict() for r in reports]}
        (building / REPORT_FILE).write_text(json.dumps(document, indent=2) + "\n")
        _publish(building, out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return reports


def _folder_names(images: Sequence[Path]) -> list[str]:
    """A folder name per image: its file stem, made unique with a counter where stems repeat."""
    names: list[str] = []
    for path in images:
        stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(path).stem) or "image"
        candidate, n = stem, 2
        while candidate in names:
            candidate, n = f"{stem}-{n}", n + 1
        names.append(candidate)
    return names


def _check_replaceable(out: Path) -> None:
    """``out`` may be written: absent, an empty folder, or an earlier report (InputError otherwise)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    if any(out.iterdir()) and not (out / REPORT_FILE).is_file():
        raise InputError(f"{out} exists and is not a ccacodec report; choose another --out or empty it")


def _publish(building: Path, out: Path) -> None:
    """Move the finished report into ``out``, replacing an earlier report only now."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{building.name}")
        out.rename(old)
        building.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        building.rename(out)
    out.chmod(0o755)  # mkdtemp made it private


def _compare_one(
    image: SourceImage, label: str, folder: Path, stem: str, model: LoadedModel, codecs: Sequence[classical.ClassicalCodec],
    options: EncodeOptions, say: Callable[[str], None],
) -> ImageReport:
    """Code one image with ccacodec and every codec at its size; measure; crop the differing regions."""
    original = folder / "original.png"
    Image.fromarray(image.rgb).save(original, compress_level=6)
    ours, decoded = _code_ours(image, folder, model, options)
    versions, outputs = [ours], {OURS: decoded}
    failures = []
    with tempfile.TemporaryDirectory(prefix="cca-compare-") as scratch:
        source = classical.write_source_png(image.rgb, Path(scratch) / "source.png")
        for codec in codecs:
            try:
                version, rgb = _code_matched(codec, source, image, folder, ours.bytes, Path(scratch))
            except classical.ToolFailure as exc:
                failures.append(f"{codec.key}: {exc}")
                say(f"{label}: {codec.key} failed: {exc}")
                continue
            versions.append(version)
            outputs[codec.key] = rgb
    regions = [_crop_region(box, spread, image.rgb, outputs, folder, index) for index, (box, spread) in enumerate(
        differing_regions(image.rgb, list(outputs.values()), REGIONS, min(CROP_SIDE, image.width, image.height))
    )]
    return ImageReport(
        image=label, width=image.width, height=image.height, folder=stem, original=_in_report(original, folder),
        codecs=versions, failures=failures, regions=regions,
    )


def _code_ours(image: SourceImage, folder: Path, model: LoadedModel, options: EncodeOptions) -> tuple[Version, np.ndarray]:
    """ccacodec's file: at ``options.quality``, or at the quality rate control finds for
    ``options.target`` (its chosen file, whose encode time is that of one encode at that quality)."""
    note = None
    if options.target is not None:
        searched = encode(image, model, options)
        assert searched.rate is not None
        options, note = replace(options, quality=searched.quality, target=None), f"rate control: {searched.rate.message}"
    start = time.perf_counter()
    data = encode(image, model, options).data
    encode_s = time.perf_counter() - start
    path = folder / f"{OURS}.cca"
    path.write_bytes(data)
    start = time.perf_counter()
    decoded = decode_image(path.read_bytes(), model, device=options.device, precision=options.precision)
    decode_s = time.perf_counter() - start
    rgb = output_rgb(decoded)
    quality, effort = options.quality, options.effort
    version = _measured(
        image, rgb, folder, name=OURS, label=f"ccacodec {model.model_id} ({options.context})",
        setting=f"quality {quality:g}" + (f", effort {effort}" if effort > 1 else ""),
        file_bytes=len(data), encode_s=encode_s, decode_s=decode_s, file=path,
    )
    version.note = note
    return version, rgb


def _code_matched(
    codec: classical.ClassicalCodec, source: classical.Source, image: SourceImage, folder: Path, target_bytes: int, scratch: Path
) -> tuple[Version, np.ndarray]:
    """``codec``'s file at the setting closest to ``target_bytes``, coded again into the report and timed."""
    setting, note = match_size(lambda s: _probe_size(codec, source, s, scratch), codec.span, codec.integer, target_bytes)
    path = folder / f"{codec.key}{codec.suffix}"
    coded = codec.run(source, setting, path)
    error = coded.file_bytes / target_bytes - 1
    if abs(error) > SIZE_TOLERANCE and note is None:
        note = f"closest setting found is {100 * error:+.1f} % off"
    version = _measured(
        image, coded.rgb, folder, name=codec.key, label=codec.name, setting=f"{codec.setting_name} {setting:.4g}",
        file_bytes=coded.file_bytes, encode_s=coded.encoding_time, decode_s=coded.decoding_time, file=path,
    )
    version.size_error, version.note = error, note
    return version, coded.rgb


def _probe_size(codec: classical.ClassicalCodec, source: classical.Source, setting: float, scratch: Path) -> int:
    """Bytes of ``codec``'s file at ``setting`` (encoded into ``scratch``, then deleted)."""
    path = scratch / f"probe{codec.suffix}"
    try:
        codec.encode(source, setting, path)
        return path.stat().st_size
    finally:
        path.unlink(missing_ok=True)


def match_size(
    size_at: Callable[[float], int], span: tuple[float, float], integer: bool, target: int, max_probes: int = MAX_PROBES
) -> tuple[float, str | None]:
    """The setting in ``span`` whose file size is closest to ``target`` bytes, by bisection.

    ``span`` is (setting at the lowest rate, setting at the highest rate), in either numeric order;
    sizes are assumed to grow from the first towards the second (closely enough for a bisection).
    ``integer`` settings are searched on whole numbers. The search stops within STOP_TOLERANCE, when
    the bracket has closed (neighbouring whole numbers, or 1/1000 of the span), or after ``max_probes``
    encodes; the best probe wins.

    Returns:
        (setting, note): the note says why no setting could come within SIZE_TOLERANCE when the
        target lies outside the range's sizes; otherwise None.
    """
    sizes: dict[float, int] = {}

    def probe(setting: float) -> int:
        if setting not in sizes:
            sizes[setting] = size_at(setting)
        return sizes[setting]

    def best() -> float:
        return min(sizes, key=lambda s: abs(sizes[s] - target))

    low, high = (float(round(v)) if integer else float(v) for v in span)
    if probe(low) >= target:
        return low, _out_of_range(sizes[low], target, "smallest", low)
    if probe(high) <= target:
        return high, _out_of_range(sizes[high], target, "largest", high)
    resolution = 1.0 if integer else 1e-3 * abs(high - low)
    while len(sizes) < max_probes and abs(high - low) > resolution:
        middle = (low + high) / 2
        if integer:
            middle = float(round(middle))
            if middle in (low, high):
                break
        size = probe(middle)
        if abs(size - target) <= STOP_TOLERANCE * target:
            break
        if size < target:
            low = middle
        else:
            high = middle
    return best(), None


def _out_of_range(size: int, target: int, end: str, setting: float) -> str | None:
    """The note for a target beyond an end of the range (None when that end is close enough)."""
    if abs(size / target - 1) <= SIZE_TOLERANCE:
        return None
    return f"its {end} file (setting {setting:g}) is {100 * (size / target - 1):+.1f} % off ccacodec's size"


def _measured(
    image: SourceImage, rgb: np.ndarray, folder: Path, *, name: str, label: str, setting: str, file_bytes: int,
    encode_s: float, decode_s: float, file: Path,
) -> Version:
    """A :class:`Version` with its measures against ``image``; its decoding saved as ``<name>.png`` in the
    image's ``folder``."""
    decoded = folder / f"{name}.png"
    Image.fromarray(np.ascontiguousarray(rgb)).save(decoded, compress_level=6)
    measured = fidelity(image.rgb, rgb)
    return Version(
        name=name, label=label, setting=setting, bytes=file_bytes, bpp=bits_per_pixel(file_bytes, image.width, image.height),
        psnr=measured.psnr, ms_ssim=measured.ms_ssim, ssimulacra2=measured.ssimulacra2,
        encode_s=encode_s, decode_s=decode_s, file=_in_report(file, folder), decoded=_in_report(decoded, folder),
    )


def _in_report(path: Path, folder: Path) -> str:
    """``path``, a file under an image's ``folder`` of the report, relative to the report folder."""
    return str(path.relative_to(folder.parent))


def _crop_region(
    box: tuple[int, int, int], spread: float, original: np.ndarray, outputs: dict[str, np.ndarray], folder: Path, index: int
) -> Region:
    """Save the 1:1 and the zoomed crop of ``box`` for the original and every decoding."""
    left, top, side = box
    inner = max(1, side // ZOOM)
    offset = (side - inner) // 2
    crops_dir = folder / "crops"
    crops_dir.mkdir(exist_ok=True)
    region = Region(box=box, spread=spread)
    for name, rgb in {"original": original, **outputs}.items():
        full = rgb[top : top + side, left : left + side]
        zoomed = full[offset : offset + inner, offset : offset + inner]
        a, b = crops_dir / f"r{index + 1}-{name}.png", crops_dir / f"r{index + 1}-{name}-x{ZOOM}.png"
        Image.fromarray(np.ascontiguousarray(full)).save(a)
        Image.fromarray(np.ascontiguousarray(zoomed)).save(b)
        region.crops[name] = (_in_report(a, folder), _in_report(b, folder))
    return region
