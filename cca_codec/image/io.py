"""Reading input images under a stated policy, and writing decoded ones.

Input policy (see :func:`load_image`): every image Pillow can open (PNG, JPEG, WebP, TIFF,
BMP, PPM, GIF ...) becomes 8-bit RGB pixels plus an optional 8-bit alpha plane, with a
flag saying whether it was grayscale. Whatever is lost or changed on the way (bit depth,
palette, colour space, extra frames, orientation) is reported as one sentence in
``SourceImage.notes``; nothing is dropped silently except an alpha plane that is fully
opaque. ICC profile and EXIF are kept so the decoder can write them back.
"""
from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cca_codec.base.errors import InputError, UsageError
from cca_codec.base.fileio import STDOUT, read_file, write_output
from cca_codec.base.runtime import usable_cpus
from cca_codec.image.png import png_bytes

COLOR_MODES = ("rgb", "gray")
"""Values of ``color_mode``: ``"gray"`` means the image is restored as one channel."""

STDIN_LABEL = "standard input"
"""How input given as ``bytes`` is named in error messages."""

_EXIF_ORIENTATION = 0x0112
_TIFF_LAYOUT_TAGS = frozenset(
    {254, 256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 284, 317, 320}
    | {322, 323, 324, 325, 338, 339, 34675}
)
_ICC_COLOUR_SPACE = {"rgb": b"RGB ", "gray": b"GRAY"}
_GRAY_MODES = frozenset({"1", "L", "I", "F"})
_RGB_MODES = frozenset({"RGB", "RGBA", "RGBa", "RGBX"})
_REDUCED_16 = "16-bit input reduced to 8 bits per channel"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".ppm", ".pgm", ".pbm", ".pnm", ".gif"})
"""File name suffixes (lower case) that the tools take as images when they scan a folder (evaluation,
`encode-dataset`, the training pack); `load_image` reads them all."""
_SAVE_FORMATS: dict[str, tuple[str, dict[str, object]]] = {
    ".png": ("PNG", {}),  # written by cca_codec.image.png, not by Pillow
    ".bmp": ("BMP", {}),
    ".ppm": ("PPM", {}),
    ".tif": ("TIFF", {}),
    ".tiff": ("TIFF", {}),
    ".webp": ("WEBP", {"lossless": True, "exact": True}),
}
_METADATA_FORMATS = frozenset({"TIFF", "WEBP"})
_OPAQUE_FORMATS = frozenset({"BMP", "PPM"})

_Planes = tuple[np.ndarray, "np.ndarray | None", int]
"""``(pixels, alpha, bit_depth)``: pixels (H, W) gray or (H, W, 3) RGB, alpha (H, W); uint8."""


@dataclass
class SourceImage:
    """An input image normalised for the encoder.

    Attributes:
        rgb: (H, W, 3) uint8, C-contiguous; grayscale images are replicated into 3 channels.
        color_mode: ``"rgb"``, or ``"gray"`` when the image is to be restored as one channel.
        bit_depth: bits per channel of the original (1, 2, 4, 8, 16, 32).
        alpha: (H, W) uint8 alpha plane when the input had real transparency, else None.
        icc_profile: ICC profile bytes, kept only when it describes ``color_mode``.
        exif: EXIF as Pillow's ``exif=`` save option takes it (``Exif\\0\\0`` + TIFF
            structure), orientation reset to 1 once applied to the pixels; None if absent.
        notes: one sentence per piece of information lost or changed.
    """

    rgb: np.ndarray
    color_mode: str
    bit_depth: int
    alpha: np.ndarray | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def width(self) -> int:
        """Width in pixels."""
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        """Height in pixels."""
        return int(self.rgb.shape[0])


@dataclass
class DecodedImage:
    """What the decoder hands back, ready to be written out.

    Attributes:
        rgb: (H, W, 3) uint8; for ``color_mode == "gray"`` only channel 0 is used.
        color_mode: ``"rgb"`` or ``"gray"``.
        alpha: (H, W) uint8 alpha plane, or None.
        icc_profile: ICC profile bytes to embed, or None.
        exif: EXIF bytes to embed (as in :class:`SourceImage`), or None.
    """

    rgb: np.ndarray
    color_mode: str
    alpha: np.ndarray | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None

    def __post_init__(self) -> None:
        if self.color_mode not in COLOR_MODES:
            raise ValueError(f"color_mode must be one of {COLOR_MODES}, not {self.color_mode!r}")
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3 or self.rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be (H, W, 3) uint8, not {self.rgb.shape} {self.rgb.dtype}")
        if self.alpha is not None and (
            self.alpha.shape != self.rgb.shape[:2] or self.alpha.dtype != np.uint8
        ):
            raise ValueError(f"alpha must be {self.rgb.shape[:2]} uint8, not {self.alpha.shape}")

    def channels(self) -> np.ndarray:
        """(H, W, C) uint8 as written out: C = 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA."""
        channels = self.rgb[..., :1] if self.color_mode == "gray" else self.rgb
        if self.alpha is not None:
            channels = np.concatenate([channels, self.alpha[..., None]], axis=2)
        return channels

    def to_pil(self) -> Image.Image:
        """The image as Pillow mode ``"L"``, ``"LA"``, ``"RGB"`` or ``"RGBA"``."""
        channels = self.channels()
        if channels.shape[2] == 1:
            channels = channels[..., 0]
        return Image.fromarray(np.ascontiguousarray(channels))


def load_image(
    source: str | os.PathLike[str] | bytes, max_pixels: int | None = None, name: str = STDIN_LABEL
) -> SourceImage:
    """Read an image file (a path, or the file's content as ``bytes``, e.g. from stdin).

    ``name`` is how content given as ``bytes`` is called in error messages (default: standard input).

    ``max_pixels`` (width * height) replaces ``PIL.Image.MAX_IMAGE_PIXELS`` for this call;
    the size is checked from the file's header, before the pixels are decoded.

    Policy: only the first frame of multi-frame input is read; EXIF orientation is applied
    to the pixels; 16- and 32-bit samples are scaled to 8 bits with rounding; palette,
    CMYK and other colour spaces become RGB; a fully opaque alpha plane is dropped.
    Each such change adds a sentence to ``notes``.

    Raises:
        InputError: missing, empty, unreadable, truncated or corrupt input, an unsupported
            pixel mode, or more pixels than ``max_pixels`` (or ``PIL.Image.MAX_IMAGE_PIXELS``) allows.
    """
    label, data = _read_source(source, name)
    notes: list[str] = []
    with _pixel_limit(max_pixels):
        img, raw_mode, exif, orientation = _decode_first_frame(data, label, notes)
    return _normalise(img, raw_mode, exif, orientation, label, notes)


def image_from_pil(img: Image.Image, label: str = "image") -> SourceImage:
    """An image already in memory (a Pillow image, its current frame) under :func:`load_image`'s policy.

    Its ICC profile (``img.info``) and EXIF (``img.getexif()``, orientation applied to the pixels)
    are carried; ``img`` itself is left unchanged. The bit depth Pillow reduced while loading a
    file (16-bit RGB) is no longer known here: such pixels count as 8-bit.

    Raises:
        InputError: an unsupported pixel mode (``label`` names the image in the message).
    """
    with _pillow_errors(label):
        img.load()
    exif = Image.Exif()
    exif.load(img.getexif().tobytes())  # a copy: the policy edits it
    return _normalise(img, "", exif, exif.get(_EXIF_ORIENTATION), label, [])


def _normalise(
    img: Image.Image, raw_mode: str, exif: Image.Exif, orientation: object, label: str, notes: list[str]
) -> SourceImage:
    """The policy of :func:`load_image` applied to a loaded frame (``raw_mode``, ``exif`` and
    ``orientation`` as :func:`_decode_first_frame` returns them)."""
    icc_profile = img.info.get("icc_profile")
    oriented = _apply_orientation(img, exif, orientation, notes)
    pixels, alpha, bit_depth = _planes(oriented, raw_mode, label, notes)
    color_mode = "gray" if pixels.ndim == 2 else "rgb"
    rgb = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)
    return SourceImage(
        rgb=np.array(rgb, dtype=np.uint8, order="C"),
        color_mode=color_mode,
        bit_depth=bit_depth,
        alpha=_real_alpha(alpha),
        icc_profile=_matching_icc(icc_profile, color_mode, notes),
        exif=_portable_exif(exif),
        notes=notes,
    )


def encode_png(img: DecodedImage, threads: int | None = None) -> bytes:
    """PNG file bytes of ``img``, with its ICC profile and EXIF embedded (:func:`cca_codec.image.png.png_bytes`,
    deflated in up to ``threads`` parallel bands; None: as many as the process has CPUs)."""
    return png_bytes(
        img.channels(), icc_profile=img.icc_profile, exif=img.exif, threads=threads or usable_cpus()
    )


def save_image(img: DecodedImage, path: str, *, overwrite: bool = True, threads: int | None = None) -> None:
    """Write ``img`` to ``path`` atomically, in the format its extension names.

    ``"-"`` writes PNG to standard output. Supported extensions: .png .bmp .ppm .tif
    .tiff .webp (lossless). ICC profile and EXIF are embedded in PNG, TIFF and WebP.
    ``threads``: CPU threads for writing PNG (:func:`encode_png`).

    Raises:
        InputError: unknown extension, alpha for BMP or PPM, ``path`` exists and ``overwrite``
            is False, or the file cannot be written.
    """
    if path == STDOUT:
        write_output(STDOUT, encode_png(img, threads))
        return
    extension = os.path.splitext(path)[1].lower()
    if extension not in _SAVE_FORMATS:
        supported = " ".join(_SAVE_FORMATS)
        raise InputError(
            f"{path}: unsupported output format {extension or '(no extension)'}; "
            f"use one of {supported}"
        )
    fmt, options = _SAVE_FORMATS[extension]
    if fmt in _OPAQUE_FORMATS and img.alpha is not None:
        raise InputError(f"{path}: {fmt} cannot store transparency; use .png, .tif or .webp")
    data = encode_png(img, threads) if fmt == "PNG" else _encode(img, fmt, options)
    write_output(path, data, overwrite=overwrite)


def _encode(img: DecodedImage, fmt: str, options: dict[str, object]) -> bytes:
    """File bytes of ``img`` in Pillow format ``fmt`` with save ``options``."""
    pil = img.to_pil()
    kwargs = dict(options)
    if fmt in _METADATA_FORMATS:
        metadata = {"icc_profile": img.icc_profile, "exif": img.exif}
        kwargs.update({key: value for key, value in metadata.items() if value})
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _read_source(source: str | os.PathLike[str] | bytes, name: str) -> tuple[str, bytes]:
    """``(label for messages, file content)`` of a path, or of content given as bytes (called ``name``)."""
    if isinstance(source, bytes):
        label, data = name, source
    else:
        label = os.fspath(source)
        data = read_file(source, "an image")
    if not data:
        raise InputError(f"{label} is empty")
    return label, data


@contextmanager
def _pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Set Pillow's decompression-bomb limit to ``max_pixels`` meanwhile (None: leave it)."""
    if max_pixels is None:
        yield
        return
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


@contextmanager
def _pillow_errors(label: str) -> Iterator[None]:
    """Turn Pillow's decoding failures (and decompression-bomb warnings) into InputError."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(f"{label}: refusing to read: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise InputError(
                f"{label} is not an image Pillow can read (PNG, JPEG, WebP, TIFF, BMP, PPM)"
            ) from exc
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            raise InputError(f"{label} is truncated or corrupt ({exc})") from exc


def _decode_first_frame(
    data: bytes, label: str, notes: list[str]
) -> tuple[Image.Image, str, Image.Exif, object]:
    """Fully decode the first frame of the image file ``data``.

    Returns ``(image, raw mode as in _raw_mode, its EXIF, the EXIF orientation stored in
    the file or None)``. The orientation is read before decoding because some of Pillow's
    loaders (TIFF) apply it themselves and delete the tag.
    """
    with _pillow_errors(label):
        img = Image.open(io.BytesIO(data))
        _select_first_frame(img, notes)
        raw_mode = _raw_mode(img)
        orientation = img.getexif().get(_EXIF_ORIENTATION)
        img.load()
        return img, raw_mode, img.getexif(), orientation


def _select_first_frame(img: Image.Image, notes: list[str]) -> None:
    """Seek a multi-frame image (animation, multi-page TIFF) to frame 0, with a note."""
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        img.seek(0)
        notes.append(f"animated/multi-frame input: only the first of {frames} frames is coded")


def _raw_mode(img: Image.Image) -> str:
    """Pillow's raw (stored) mode of the current frame, e.g. ``"RGB;16B"``; ``""`` if unknown.

    Must be called before ``img.load()``, which clears ``img.tile``.
    """
    if not img.tile:
        return ""
    args = img.tile[0][3]
    if isinstance(args, tuple):
        args = args[0] if args else ""
    return args if isinstance(args, str) else ""


def _apply_orientation(
    img: Image.Image, exif: Image.Exif, orientation: object, notes: list[str]
) -> Image.Image:
    """Rotate/flip ``img`` as the file's EXIF ``orientation`` says; set that tag in ``exif`` to 1.

    ``exif`` is ``img``'s own cached EXIF object: if it still holds the orientation, Pillow
    has not applied it yet, and it is changed only after the transpose has read it.
    """
    if orientation is None:
        return img
    oriented = img
    if orientation in range(2, 9):
        if exif.get(_EXIF_ORIENTATION) == orientation:
            oriented = ImageOps.exif_transpose(img)
        notes.append(f"EXIF orientation {orientation} applied")
    exif[_EXIF_ORIENTATION] = 1
    return oriented


def _portable_exif(exif: Image.Exif) -> bytes | None:
    """``exif`` as bytes without tags describing the source file's pixel layout, or None if empty.

    A TIFF's EXIF as Pillow reads it is its whole first IFD: size, strips, compression,
    sample format, ICC profile ... Those are stale once the pixels are re-encoded.
    """
    for tag in _TIFF_LAYOUT_TAGS & set(exif):
        del exif[tag]
    return exif.tobytes() if len(exif) else None


def _planes(img: Image.Image, raw_mode: str, label: str, notes: list[str]) -> _Planes:
    """Normalise any Pillow mode to 8-bit gray or RGB pixels plus optional alpha."""
    mode = img.mode
    if mode in _GRAY_MODES or mode.startswith("I;16"):
        return _gray_planes(img, raw_mode, notes)
    if mode in ("LA", "La"):
        gray_alpha = np.asarray(img.convert("LA"))
        return gray_alpha[..., 0], gray_alpha[..., 1], 8
    if mode in _RGB_MODES:
        return _rgb_planes(img, raw_mode, notes)
    if mode in ("P", "PA"):
        notes.append("palette image coded as RGB")
        rgba = np.asarray(img.convert("RGBA"))
        return rgba[..., :3], rgba[..., 3], 8
    return _converted_planes(img, raw_mode, label, notes)


def _gray_planes(img: Image.Image, raw_mode: str, notes: list[str]) -> _Planes:
    """Planes of a single-channel image (modes 1, L, I;16*, I, F); alpha from tRNS."""
    if img.mode == "1":
        gray = np.asarray(img.convert("L"))
        notes.append("1-bit input coded as 8-bit grayscale")
        return gray, _keyed_alpha(gray, img.info.get("transparency")), 1
    native = np.asarray(img)
    if img.mode == "L":
        return _l_planes(native, raw_mode, img.info.get("transparency"))
    alpha = _keyed_alpha(native, img.info.get("transparency"))
    if img.mode.startswith("I;16"):
        notes.append(_REDUCED_16)
        return _scale(native, 0.0, 65535.0), alpha, 16
    values = native.astype(np.float64)
    values[~np.isfinite(values)] = 0.0
    low, high, how = _nominal_range(values, img.mode)
    notes.append(f"32-bit input reduced to 8 bits per channel, {how}")
    return _scale(values, low, high), alpha, 32


def _l_planes(gray: np.ndarray, raw_mode: str, key: object) -> _Planes:
    """Planes of mode L, which Pillow also uses for 2- and 4-bit gray (raw mode ``L;2``/``L;4``).

    Pillow stretches such samples to 0..255 but leaves the tRNS key unscaled; scale it too.
    """
    bits = {"L;2": 2, "L;4": 4}.get(raw_mode, 8)
    if isinstance(key, int) and bits < 8:
        key = key * 255 // (2**bits - 1)
    return gray, _keyed_alpha(gray, key), bits


def _nominal_range(values: np.ndarray, mode: str) -> tuple[float, float, str]:
    """``(low, high, explanation)`` of the range of 32-bit ``I``/``F`` samples to map to 0..255.

    0..65535 (16-bit data stored in 32 bits) when all values fit; 0..1 for float images
    within it; otherwise the actual min..max.
    """
    low, high = float(values.min()), float(values.max())
    if mode == "F" and low >= 0.0 and high <= 1.0:
        return 0.0, 1.0, "assuming a 0..1 range"
    if low >= 0.0 and high <= 65535.0:
        return 0.0, 65535.0, "assuming a 0..65535 range"
    return low, high, f"scaling its range {low:g}..{high:g} to 0..255"


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low..high`` linearly onto 0..255 with rounding; uint8 of ``values``' shape."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _rgb_planes(img: Image.Image, raw_mode: str, notes: list[str]) -> _Planes:
    """Planes of an RGB-family image; a 16-bit gray+alpha PNG (opened as RGBA) stays gray."""
    bit_depth = _stored_bit_depth(raw_mode, notes)
    if img.mode in ("RGBA", "RGBa"):
        rgba = np.asarray(img.convert("RGBA"))
        pixels = rgba[..., 0] if raw_mode.startswith("LA") else rgba[..., :3]
        return pixels, rgba[..., 3], bit_depth
    rgb = np.asarray(img.convert("RGB"))
    key = img.info.get("transparency")
    if bit_depth == 16 and isinstance(key, tuple):
        key = tuple(value >> 8 for value in key)
    return rgb, _keyed_alpha(rgb, key), bit_depth


def _converted_planes(img: Image.Image, raw_mode: str, label: str, notes: list[str]) -> _Planes:
    """Planes of an image in another colour space (CMYK, YCbCr, LAB, HSV ...), via Pillow."""
    try:
        rgb = np.asarray(img.convert("RGB"))
    except ValueError as exc:
        raise InputError(f"{label}: unsupported image mode {img.mode}") from exc
    is_cmyk = img.mode == "CMYK"
    notes.append("CMYK converted to RGB" if is_cmyk else f"{img.mode} image converted to RGB")
    return rgb, None, _stored_bit_depth(raw_mode, notes)


def _stored_bit_depth(raw_mode: str, notes: list[str]) -> int:
    """16 (with a note) when Pillow read 16-bit samples into an 8-bit mode, else 8."""
    if ";16" in raw_mode:
        notes.append(_REDUCED_16)
        return 16
    return 8


def _keyed_alpha(native: np.ndarray, key: object) -> np.ndarray | None:
    """(H, W) uint8 alpha that is 0 where pixels equal the tRNS colour ``key``, else 255.

    ``native`` is (H, W) or (H, W, C) in the image's own sample type; ``key`` an int (gray)
    or tuple (RGB). None when there is no key (palette transparency is bytes: not a key).
    """
    if not isinstance(key, (int, tuple)):
        return None
    samples = native.reshape(native.shape[0], native.shape[1], -1)
    transparent = np.all(samples == np.asarray(key).reshape(-1), axis=2)
    return np.where(transparent, 0, 255).astype(np.uint8)


def _real_alpha(alpha: np.ndarray | None) -> np.ndarray | None:
    """A C-contiguous copy of ``alpha``, or None when it is absent or fully opaque."""
    if alpha is None or alpha.min() == 255:
        return None
    return np.array(alpha, dtype=np.uint8, order="C")


def _matching_icc(icc_profile: bytes | None, color_mode: str, notes: list[str]) -> bytes | None:
    """``icc_profile`` if its colour space (header bytes 16..19) fits ``color_mode``, else None.

    A profile for another colour space (e.g. CMYK after conversion to RGB) would be wrong
    for the coded pixels, so it is dropped with a note.
    """
    if not icc_profile:
        return None
    space = icc_profile[16:20]
    if space == _ICC_COLOUR_SPACE[color_mode]:
        return icc_profile
    name = space.decode("ascii", "replace").strip() or "unknown"
    notes.append(f"ICC profile for {name} colour dropped: it does not fit {color_mode} pixels")
    return None


def output_rgb(decoded: DecodedImage) -> np.ndarray:
    """(H, W, 3) uint8 pixels of the image as written out (gray: channel 0 replicated)."""
    if decoded.color_mode == "gray":
        return np.repeat(decoded.rgb[..., :1], 3, axis=2)
    return decoded.rgb


def find_images(directory: Path, limit: int | None = None) -> list[Path]:
    """Image files directly in ``directory`` (by suffix, sorted by name), the first ``limit``."""
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    found = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise UsageError(f"no images ({' '.join(sorted(IMAGE_SUFFIXES))}) in {directory}")
    return found[:limit] if limit is not None else found
