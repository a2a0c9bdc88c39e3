"""Classical image codecs, run on the same 8-bit RGB pixels as ours: real files, real decoders.

Each codec writes a real compressed file (its size on disk is the rate) and decodes it back to
8-bit RGB with its own decoder. Pillow codes JPEG, WebP and AVIF (``avifpil``: its bundled
libavif, default speed 6 and 4:2:0) in-process; avifenc, cjxl, heif-enc and cwebp are
Debian's command-line tools (``make codecs`` installs them), used when on PATH.
Every codec has a sweep of settings chosen so that its curve spans about 0.1 to 2 bpp on Kodak,
and one setting for the speed benchmark. Settings other than the one swept are each tool's
defaults (chroma: JPEG 4:4:4 or 4:2:0 as named, WebP, HEIC and Pillow's AVIF 4:2:0, avifenc 4:4:4 from RGB input,
JPEG XL its XYB colour space).

    ccacodec eval DIR --compare jpeg,jpeg420,webp,avif,jxl,heic ...
"""
from __future__ import annotations

import io
import re
import shutil
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, features

from cca_codec.base.errors import UsageError

TOOL_TIMEOUT_S = 600
"""Longest a command-line encoder or decoder may run on one image, in seconds."""

INSTALL_HINT = "`make codecs` installs the Debian codecs"


class ToolFailure(Exception):
    """A classical codec failed on an image (a tool's non-zero exit, timeout or unreadable output)."""


@dataclass(frozen=True)
class Source:
    """An image to code: its pixels, and the same pixels as an 8-bit RGB PNG file for the tools."""

    rgb: np.ndarray
    png: Path


@dataclass(frozen=True)
class Coded:
    """One encode/decode round of a classical codec.

    Attributes:
        file_bytes: size of the compressed file on disk, in bytes.
        rgb: the decoded image, (H, W, 3) uint8.
        encoding_time, decoding_time: wall seconds (for the tools: the whole process, file to file).
    """

    file_bytes: int
    rgb: np.ndarray
    encoding_time: float
    decoding_time: float


class ClassicalCodec(ABC):
    """A classical codec: one setting axis (``setting``) swept over ``qualities``."""

    key: str
    """Name in ``--compare``."""
    name: str
    """Curve name in the results JSON (and its file name)."""
    suffix: str
    """File name suffix of the compressed file."""
    setting: str
    """What a quality value means for this codec, e.g. 'quality 0-100'."""
    qualities: tuple[float, ...]
    """The sweep, in the order the curve lists it."""
    bench_quality: float
    """The setting used by ``ccacodec bench``."""
    span: tuple[float, float]
    """The settings at the lowest and at the highest rate: the range ``ccacodec compare`` matches sizes over."""
    integer: bool
    """Whether the setting takes whole numbers only."""

    @property
    def setting_name(self) -> str:
        """The setting in one word, as a report names it: the first word of ``setting`` ('quality', 'distance')."""
        return self.setting.split()[0].strip(",")

    def missing(self) -> str | None:
        """Why this codec cannot run here (one line), or None when it can."""
        return None

    @abstractmethod
    def version(self) -> str:
        """The codec's implementation and version, for the results' description."""

    @abstractmethod
    def encode(self, source: Source, quality: float, out: Path) -> None:
        """Compress ``source`` at ``quality`` into the file ``out`` (ToolFailure on failure)."""

    @abstractmethod
    def decode(self, path: Path) -> np.ndarray:
        """Decode the file ``path`` to (H, W, 3) uint8 RGB (ToolFailure on failure)."""

    def run(self, source: Source, quality: float, out: Path) -> Coded:
        """Encode ``source`` into ``out`` and decode it again, timing both."""
        start = time.perf_counter()
        self.encode(source, quality, out)
        encoding_time = time.perf_counter() - start
        start = time.perf_counter()
        rgb = self.decode(out)
        decoding_time = time.perf_counter() - start
        if rgb.shape != source.rgb.shape:
            raise ToolFailure(f"{self.key}: decoded {rgb.shape[1]}x{rgb.shape[0]}, expected {source.rgb.shape[1]}x{source.rgb.shape[0]}")
        return Coded(out.stat().st_size, rgb, encoding_time, decoding_time)


def _read_rgb(path: Path, what: str) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an image file (ToolFailure when unreadable)."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))  # writable, as torch.from_numpy wants (MS-SSIM)
    except (OSError, ValueError) as exc:
        raise ToolFailure(f"cannot read the {what}: {exc}") from None


class PillowCodec(ClassicalCodec):
    """A format Pillow writes and reads (JPEG, WebP), coded in-process from the pixels."""

    def __init__(
        self, *, key: str, name: str, pil_format: str, feature: str, suffix: str, options: Callable[[float], dict],
        setting: str, qualities: Sequence[float], bench_quality: float, span: tuple[float, float], integer: bool,
    ) -> None:
        self.key, self.name, self.suffix, self.setting = key, name, suffix, setting
        self.qualities, self.bench_quality = tuple(qualities), bench_quality
        self.span, self.integer = span, integer
        self._format, self._feature, self._options = pil_format, feature, options

    def missing(self) -> str | None:
        if features.check(self._feature):
            return None
        return f"this Pillow was built without {self._feature} support"

    def version(self) -> str:
        return f"Pillow {Image.__version__}, {self._feature} {features.version(self._feature)}"

    def encode(self, source: Source, quality: float, out: Path) -> None:
        buffer = io.BytesIO()
        Image.fromarray(source.rgb).save(buffer, format=self._format, **self._options(quality))
        out.write_bytes(buffer.getvalue())

    def decode(self, path: Path) -> np.ndarray:
        return _read_rgb(path, f"{self.key} file")


class ExternalCodec(ClassicalCodec):
    """A codec run as command-line tools: an encoder from the source PNG, a decoder to PNG.

    ``encode_args(quality, src, dst)`` and ``decode_args(src, dst)`` give the argument lists
    after the program name; ``decoders`` are tried in order (the first on PATH is used).
    """

    def __init__(
        self, *, key: str, name: str, suffix: str, package: str,
        encoder: str, encode_args: Callable[[float, Path, Path], list[str]],
        decoders: Sequence[str], decode_args: Callable[[Path, Path], list[str]],
        version_args: Sequence[str], setting: str, qualities: Sequence[float], bench_quality: float,
        span: tuple[float, float], integer: bool,
    ) -> None:
        self.key, self.name, self.suffix, self.setting = key, name, suffix, setting
        self.qualities, self.bench_quality = tuple(qualities), bench_quality
        self.span, self.integer = span, integer
        self._encoder, self._decoders, self._package = encoder, tuple(decoders), package
        self._encode_args, self._decode_args, self._version_args = encode_args, decode_args, tuple(version_args)

    def _decoder(self) -> str | None:
        return next((tool for tool in self._decoders if shutil.which(tool)), None)

    def missing(self) -> str | None:
        absent = [] if shutil.which(self._encoder) else [self._encoder]
        if self._decoder() is None:
            absent.append(" or ".join(self._decoders))
        if not absent:
            return None
        return f"{' and '.join(absent)} not found on PATH (Debian package {self._package}; {INSTALL_HINT})"

    def version(self) -> str:
        try:
            done = subprocess.run([self._encoder, *self._version_args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return self._encoder
        lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        first = " ".join(re.split(r" [(\[]", lines[0])[0].split()) if lines else "version unknown"  # no build details
        return first if self._encoder in first else f"{self._encoder} {first}"

    def _call(self, program: str, args: list[str]) -> None:
        try:
            done = subprocess.run([program, *args], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ToolFailure(f"{program} ran longer than {TOOL_TIMEOUT_S} s") from None
        except OSError as exc:
            raise ToolFailure(f"cannot run {program}: {exc.strerror or exc}") from None
        if done.returncode != 0:
            lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            raise ToolFailure(f"{program} exited with {done.returncode}: {lines[-1] if lines else 'no message'}")

    def encode(self, source: Source, quality: float, out: Path) -> None:
        self._call(self._encoder, self._encode_args(quality, source.png, out))

    def decode(self, path: Path) -> np.ndarray:
        decoder = self._decoder()
        if decoder is None:
            raise ToolFailure(self.missing() or "no decoder")
        png = path.with_name(path.name + ".png")
        try:
            self._call(decoder, self._decode_args(path, png))
            return _read_rgb(png, f"{decoder} output")
        finally:
            png.unlink(missing_ok=True)


WEBP_QUALITIES = (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90)
"""WebP's sweep (Pillow and cwebp alike)."""


def _pillow_jpeg(key: str, name: str, subsampling: int) -> PillowCodec:
    """Pillow's JPEG (libjpeg-turbo, default tables, no optimisation); subsampling 0 = 4:4:4, 2 = 4:2:0."""
    return PillowCodec(
        key=key, name=name, pil_format="JPEG", feature="jpg", suffix=".jpg",
        options=lambda q: {"quality": int(q), "subsampling": subsampling},
        setting="quality 1-95", qualities=(5, 10, 20, 30, 40, 50, 60, 70, 80, 90), bench_quality=75,
        span=(1, 100), integer=True,
    )


def _q(quality: float) -> str:
    """A setting as a command-line number (integers without a decimal point)."""
    return f"{quality:g}"


CODECS: dict[str, ClassicalCodec] = {
    codec.key: codec
    for codec in (
        _pillow_jpeg("jpeg", "jpeg-444-pillow", 0),
        _pillow_jpeg("jpeg420", "jpeg-420-pillow", 2),
        PillowCodec(
            key="webp", name="webp-pillow", pil_format="WEBP", feature="webp", suffix=".webp",
            options=lambda q: {"quality": q},
            setting="quality 0-100", qualities=WEBP_QUALITIES, bench_quality=75, span=(0, 100), integer=False,
        ),
        PillowCodec(
            key="avifpil", name="avif-pillow", pil_format="AVIF", feature="avif", suffix=".avif",
            options=lambda q: {"quality": int(q)},
            setting="quality 0-100", qualities=(10, 20, 30, 40, 50, 60, 70, 80, 90), bench_quality=60,
            span=(0, 100), integer=True,
        ),
        ExternalCodec(
            key="cwebp", name="webp-cwebp", suffix=".webp", package="webp",
            encoder="cwebp", encode_args=lambda q, src, dst: ["-quiet", "-q", _q(q), str(src), "-o", str(dst)],
            decoders=("dwebp",), decode_args=lambda src, dst: ["-quiet", str(src), "-o", str(dst)],
            version_args=("-version",), setting="quality 0-100", qualities=WEBP_QUALITIES, bench_quality=75, span=(0, 100), integer=False,
        ),
        ExternalCodec(
            key="avif", name="avif-avifenc", suffix=".avif", package="libavif-bin",
            encoder="avifenc", encode_args=lambda q, src, dst: ["--min", _q(q), "--max", _q(q), str(src), str(dst)],
            decoders=("avifdec",), decode_args=lambda src, dst: ["--depth", "8", str(src), str(dst)],
            version_args=("--version",), setting="quantizer 0-63 (lower is better)",
            qualities=(60, 54, 48, 42, 36, 30, 24, 18), bench_quality=30,
            span=(63, 0), integer=True,
        ),
        ExternalCodec(
            key="jxl", name="jxl-cjxl", suffix=".jxl", package="libjxl-tools",
            encoder="cjxl", encode_args=lambda q, src, dst: [str(src), str(dst), "--distance", _q(q), "--quiet"],
            decoders=("djxl",), decode_args=lambda src, dst: [str(src), str(dst), "--bits_per_sample=8", "--quiet"],
            version_args=("--version",), setting="distance, Butteraugli (lower is better)",
            qualities=(18, 12, 8, 5.5, 3.8, 2.6, 1.8, 1.2, 0.8), bench_quality=1.0,
            span=(25, 0.05), integer=False,
        ),
        ExternalCodec(
            key="heic", name="heic-x265-heif-enc", suffix=".heic", package="libheif-examples",
            encoder="heif-enc", encode_args=lambda q, src, dst: ["--quality", _q(q), str(src), "-o", str(dst)],
            decoders=("heif-dec", "heif-convert"), decode_args=lambda src, dst: [str(src), str(dst)],
            version_args=("--help",), setting="quality 0-100", qualities=(5, 15, 25, 35, 45, 55, 65), bench_quality=50,
            span=(0, 100), integer=True,
        ),
    )
}
"""Every classical codec by its ``--compare`` key."""


def resolve(keys: Sequence[str]) -> list[ClassicalCodec]:
    """The codecs named by ``keys`` (each at most once, in the order given).

    Raises:
        UsageError: an unknown or repeated key.
    """
    unknown = [key for key in keys if key not in CODECS]
    if unknown:
        raise UsageError(f"unknown codec {', '.join(unknown)} in --compare; choose from {','.join(CODECS)}")
    if len(set(keys)) != len(keys):
        raise UsageError("--compare names a codec twice")
    return [CODECS[key] for key in keys]


def available(codecs: Sequence[ClassicalCodec], say: Callable[[str], None]) -> list[ClassicalCodec]:
    """The codecs that can run here; ``say`` gets one line for each one that cannot."""
    usable = []
    for codec in codecs:
        reason = codec.missing()
        if reason is None:
            usable.append(codec)
        else:
            say(f"{codec.key} skipped: {reason}")
    return usable


def write_source_png(rgb: np.ndarray, path: Path) -> Source:
    """Write ``rgb`` as an 8-bit RGB PNG (no metadata) for the command-line encoders."""
    Image.fromarray(np.ascontiguousarray(rgb)).save(path, format="PNG", compress_level=1)
    return Source(rgb=rgb, png=path)
