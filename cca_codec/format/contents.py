"""What a ``.cca`` file holds, in memory, and the rules it must keep.

:class:`Header` (the CHDR chunk), :class:`TilePayload` (one CDAT chunk) and :class:`Container`
(a whole file), the values their fields may take, and the checks that both the reader and the
writer of :mod:`cca_codec.format.container` apply (:func:`container_problem`). The byte layout
of the chunks is the container module's; the specification is ``docs/FORMAT.md``.

Pure Python and stdlib only.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterator

FORMAT_VERSION = 1
CONTEXT_MODES = ("grouped", "checkerboard")  # index = context_mode byte
COLOR_MODES = ("rgb", "gray")  # index = color_mode byte
COLOR_SPACES = ("srgb", "icc")  # index = color_space byte
NUMERIC_MODE_FLOAT64 = 1
CODER_CONSTRICTION_RANGE = 1

MAX_DIMENSION = (1 << 31) - 1
MAX_QUALITY = 64.0
MAX_LATENT_ALIGN = 1024
MAX_TILE_PIXELS = 1 << 22  # padded area of the largest region one tile is coded over
SHA256_BYTES = 32

_MODEL_ID_RE = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Header:
    """The CHDR chunk: everything a decoder needs before it reads tile data.

    Sizes are in pixels of the original image.  ``quality`` is the (possibly
    fractional) quality level and ``lam`` its rate-distortion lambda.  ``tile_width``
    x ``tile_height`` is the tile size; the image is cut into :attr:`tile_grid`
    tiles numbered in row-major order.  ``latent_align`` is the network's size
    multiple (a power of two).  ``weights_sha256`` is the 32-byte SHA-256 of the
    model weights the file was made with.
    """

    width: int
    height: int
    color_mode: str
    bit_depth: int
    color_space: str
    context_mode: str
    quality: float
    lam: float
    tile_width: int
    tile_height: int
    tile_overlap: int
    latent_align: int
    coder_version: str
    model_id: str
    weights_sha256: bytes
    numeric_mode: int = NUMERIC_MODE_FLOAT64
    coder_id: int = CODER_CONSTRICTION_RANGE
    format_version: int = FORMAT_VERSION

    @property
    def tile_grid(self) -> tuple[int, int]:
        """(rows, cols) of the tile grid: ceil(height / tile_height), ceil(width / tile_width)."""
        return -(-self.height // self.tile_height), -(-self.width // self.tile_width)

    @property
    def tile_count(self) -> int:
        """Number of tiles (rows * cols), i.e. the number of CDAT chunks in the file."""
        rows, cols = self.tile_grid
        return rows * cols


@dataclass(frozen=True)
class TilePayload:
    """One CDAT chunk: the coded stream of tile ``tile_index`` (row-major).

    ``symbols_crc32`` is the CRC-32 of the tile's decoded symbols, checked by the
    decoder after entropy decoding; ``stream`` is the range coder's output.
    """

    tile_index: int
    symbols_crc32: int
    stream: bytes


@dataclass(frozen=True)
class Container:
    """A whole ``.cca`` file in memory.

    ``tiles`` are sorted by ``tile_index`` and cover the tile grid exactly once.
    ``alpha`` is the raw (uncompressed) uint8 alpha plane, ``height * width`` bytes in
    row-major order.  ``skipped_chunks`` lists the types of unknown ancillary chunks the
    reader skipped; :func:`~cca_codec.format.container.write_container` ignores it (their contents are not kept).
    """

    header: Header
    tiles: tuple[TilePayload, ...]
    icc_profile: bytes | None = None
    exif: bytes | None = None
    alpha: bytes | None = None
    skipped_chunks: tuple[str, ...] = ()


# --------------------------------------------------------------------------- validation
# Each *_problem function returns a one-line description of the first rule broken, or
# None.  The reader (container.read_container) raises it as FormatError, the writer
# (container.write_container) as ValueError.


def is_int(value: object) -> bool:
    """An int and not a bool (which Python counts as an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _range_problem(name: str, value: object, low: int, high: int) -> str | None:
    if not is_int(value):
        return f"header field {name} must be an int, got {type(value).__name__}"
    if not low <= value <= high:
        return f"header field {name} = {value} is out of range {low}..{high}"
    return None


def _choice_problem(name: str, value: object, choices: tuple[str, ...]) -> str | None:
    if value not in choices:
        return f"header field {name} = {value!r} is not one of {', '.join(choices)}"
    return None


def _only_value_problem(name: str, value: object, only: int, meaning: str) -> str | None:
    if not is_int(value) or value != only:
        return f"header field {name} = {value!r} is not supported (only {only} = {meaning} is defined)"
    return None


def _header_checks(h: Header) -> Iterator[str | None]:
    """Every CHDR rule in field order, yielding a message for a broken rule and None for a kept one.

    Lazy on purpose: a check runs only when the earlier ones passed (tile_width is
    compared with width only once width is known to be an int).
    """
    yield _only_value_problem("numeric_mode", h.numeric_mode, NUMERIC_MODE_FLOAT64, "float64")
    yield _only_value_problem("coder_id", h.coder_id, CODER_CONSTRICTION_RANGE, "constriction RangeEncoder")
    yield _choice_problem("color_mode", h.color_mode, COLOR_MODES)
    yield _choice_problem("color_space", h.color_space, COLOR_SPACES)
    yield _choice_problem("context_mode", h.context_mode, CONTEXT_MODES)
    yield _range_problem("width", h.width, 1, MAX_DIMENSION)
    yield _range_problem("height", h.height, 1, MAX_DIMENSION)
    yield _range_problem("bit_depth", h.bit_depth, 1, 16)
    if not (_is_real(h.quality) and math.isfinite(h.quality) and 0 < h.quality <= MAX_QUALITY):
        yield f"header field quality = {h.quality!r} must be finite and in (0, {MAX_QUALITY:g}]"
    if not (_is_real(h.lam) and math.isfinite(h.lam) and h.lam > 0):
        yield f"header field lam = {h.lam!r} must be finite and > 0"
    yield _range_problem("tile_width", h.tile_width, 1, h.width)
    yield _range_problem("tile_height", h.tile_height, 1, h.height)
    yield _range_problem("tile_overlap", h.tile_overlap, 0, 0xFFFF)
    align = h.latent_align
    if not (is_int(align) and 1 <= align <= MAX_LATENT_ALIGN and align & (align - 1) == 0):
        yield f"header field latent_align = {align!r} is not a power of two in 1..{MAX_LATENT_ALIGN}"
    yield _tile_axis_problem("tile_width", h.width, h.tile_width, h.tile_overlap, align)
    yield _tile_axis_problem("tile_height", h.height, h.tile_height, h.tile_overlap, align)
    tile_pixels = padded_tile_extent(h.width, h.tile_width, h.tile_overlap, align) * padded_tile_extent(
        h.height, h.tile_height, h.tile_overlap, align
    )
    if tile_pixels > MAX_TILE_PIXELS:
        yield f"tiles of {tile_pixels} pixels (padded, with overlap) exceed the limit of {MAX_TILE_PIXELS}"
    if not isinstance(h.coder_version, str) or not h.coder_version.isprintable():
        yield f"header field coder_version = {h.coder_version!r} must be a printable string"
    elif not 1 <= len(h.coder_version.encode("utf-8")) <= 255:
        yield "header field coder_version must be 1..255 bytes of UTF-8"
    if not isinstance(h.model_id, str) or not _MODEL_ID_RE.fullmatch(h.model_id):
        yield f"header field model_id = {h.model_id!r} must be non-empty and use only [A-Za-z0-9._-]"
    elif len(h.model_id) > 255:
        yield "header field model_id must be at most 255 characters"
    if not isinstance(h.weights_sha256, bytes) or len(h.weights_sha256) != SHA256_BYTES:
        yield f"header field weights_sha256 must be {SHA256_BYTES} bytes"


def padded_tile_extent(total: int, tile: int, overlap: int, align: int) -> int:
    """Pixels, along one axis, of the longest region a tile is coded over, padded to ``align``.

    ``total`` is the image size on that axis and ``tile`` the core tile size: one tile covers
    ``total``; with several, a tile is at most its core plus ``overlap`` on both sides.
    """
    extent = total if tile >= total else min(total, tile + 2 * overlap)
    return -(-extent // align) * align


def _tile_axis_problem(name: str, total: int, tile: int, overlap: int, align: int) -> str | None:
    """An axis with several tiles needs a core size that is a multiple of ``align`` and >= 2 * overlap."""
    if tile == total:
        return None
    if tile % align:
        return f"header field {name} = {tile} must equal the image size or be a multiple of latent_align = {align}"
    if 2 * overlap > tile:
        return f"header field tile_overlap = {overlap} is more than half of {name} = {tile}"
    return None


def header_problem(h: Header) -> str | None:
    """First rule of the CHDR specification that ``h`` breaks, or None."""
    if h.format_version != FORMAT_VERSION:
        return version_message(h.format_version)
    return next((p for p in _header_checks(h) if p is not None), None)


def version_message(version: object) -> str:
    """The message for a file of a format version this reader does not support."""
    return f"unsupported .cca format version {version!r} (this reader supports version {FORMAT_VERSION})"


def _tiles_problem(tiles: tuple[TilePayload, ...], header: Header) -> str | None:
    """First problem with the tile list: it must be tiles 0..n-1 of the grid, in order."""
    rows, cols = header.tile_grid
    expected = rows * cols
    if not tiles:
        return "no tile data (the file has no CDAT chunk)"
    for position, tile in enumerate(tiles):
        if not isinstance(tile, TilePayload):
            return f"tiles[{position}] is a {type(tile).__name__}, not a TilePayload"
        index = tile.tile_index
        if not is_int(index) or not 0 <= index < expected:
            return f"tile index {index!r} is out of range (the {rows}x{cols} tile grid has {expected} tiles)"
        if index > position:
            return f"tile {position} of {expected} is missing (tile grid {rows}x{cols})"
        if index < position:
            return f"tile index {index} appears twice or out of order"
        if not is_int(tile.symbols_crc32) or not 0 <= tile.symbols_crc32 <= 0xFFFFFFFF:
            return f"tile {index}: symbols_crc32 = {tile.symbols_crc32!r} is not a u32"
        if not isinstance(tile.stream, bytes):
            return f"tile {index}: stream must be bytes, got {type(tile.stream).__name__}"
    if len(tiles) < expected:
        return f"tile {len(tiles)} of {expected} is missing (tile grid {rows}x{cols})"
    return None


def _ancillary_problem(c: Container) -> str | None:
    """First problem with the optional ICC profile, EXIF block and alpha plane."""
    for name, value in (("icc_profile", c.icc_profile), ("exif", c.exif), ("alpha", c.alpha)):
        if value is not None and (not isinstance(value, bytes) or not value):
            return f"{name} must be None or non-empty bytes"
    if (c.header.color_space == "icc") != (c.icc_profile is not None):
        return f"color_space is {c.header.color_space!r} but the ICC profile is {'absent' if c.icc_profile is None else 'present'}"
    pixels = c.header.width * c.header.height
    if c.alpha is not None and len(c.alpha) != pixels:
        return f"alpha plane has {len(c.alpha)} bytes, expected height*width = {pixels}"
    return None


def container_problem(c: Container) -> str | None:
    """First rule of the format that ``c`` breaks, or None."""
    if not isinstance(c.header, Header):
        return f"header is a {type(c.header).__name__}, not a Header"
    if not isinstance(c.tiles, tuple):
        return f"tiles must be a tuple, got {type(c.tiles).__name__}"
    return header_problem(c.header) or _tiles_problem(c.tiles, c.header) or _ancillary_problem(c)
