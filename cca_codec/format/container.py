"""The ``.cca`` container: a PNG-style chunked file holding one coded image.

Layout (the byte-level specification is ``docs/FORMAT.md``)::

    signature (8 bytes) | CHDR | iCCP? | eXIf? | aLPH? | CDAT ... | CEND

Every chunk is ``u32 length | 4-byte type | payload | u32 CRC-32(type + payload)``,
all integers big-endian.  A chunk type whose first letter is uppercase is *critical*
(a reader that does not know it must refuse the file); lowercase is *ancillary* (an
unknown one is skipped).  What the chunks carry (:class:`~cca_codec.format.contents.Header`,
:class:`~cca_codec.format.contents.TilePayload`, :class:`~cca_codec.format.contents.Container`)
and the rules it must keep are :mod:`cca_codec.format.contents`; this module writes and
reads them as chunks.

This module is pure Python and stdlib only.  :func:`read_container` and
:func:`read_header` treat their input as hostile: every problem is reported as a
:class:`~cca_codec.base.errors.FormatError` with a one-line message, never as a stray
``struct.error``/``zlib.error``/``IndexError``.  :func:`write_container` applies the
same rules to what it is given and raises ``ValueError`` for a container that could
not be read back.
"""
from __future__ import annotations

import struct
import zlib
from typing import Union

from cca_codec.base.errors import FormatError

from .contents import (
    COLOR_MODES,
    COLOR_SPACES,
    CONTEXT_MODES,
    FORMAT_VERSION,
    SHA256_BYTES,
    Container,
    Header,
    TilePayload,
    container_problem,
    header_problem,
    is_int,
    version_message,
)

__all__ = [
    "SIGNATURE",
    "MAX_CHUNK_LENGTH",
    "DEFAULT_MAX_PIXELS",
    "write_container",
    "read_container",
    "read_header",
    "container_overhead",
    "describe",
]

SIGNATURE = b"\x89CCA\r\n\x1a\n"
MAX_CHUNK_LENGTH = 1 << 30  # payload bytes of one chunk
DEFAULT_MAX_PIXELS = 1 << 28  # width * height a reader accepts by default
ALPHA_ZLIB_LEVEL = 9

_U32 = struct.Struct(">I")
_CDAT_PREFIX = struct.Struct(">II")  # tile_index, symbols_crc32
# format_version, width, height, color_mode, bit_depth, color_space, context_mode,
# numeric_mode, coder_id, quality, lam, tile_width, tile_height, tile_overlap, latent_align
_CHDR_FIXED = struct.Struct(">BIIBBBBBBddIIHH")
_CHUNK_FRAMING = 12  # length + type + CRC
_ASCII_LETTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

_CHDR, _CDAT, _CEND = "CHDR", "CDAT", "CEND"
_ICCP, _EXIF, _ALPH = "iCCP", "eXIf", "aLPH"
_KNOWN_ANCILLARY = (_ICCP, _EXIF, _ALPH)

BytesLike = Union[bytes, bytearray, memoryview]


# ------------------------------------------------------------------------------ writing


def _pack_string(value: str) -> bytes:
    raw = value.encode("utf-8")
    return bytes([len(raw)]) + raw


def _pack_chdr(h: Header) -> bytes:
    """CHDR payload of a valid header (see docs/FORMAT.md for the layout)."""
    fixed = _CHDR_FIXED.pack(
        h.format_version, h.width, h.height,
        COLOR_MODES.index(h.color_mode), h.bit_depth, COLOR_SPACES.index(h.color_space),
        CONTEXT_MODES.index(h.context_mode), h.numeric_mode, h.coder_id,
        float(h.quality), float(h.lam),
        h.tile_width, h.tile_height, h.tile_overlap, h.latent_align,
    )
    return fixed + _pack_string(h.coder_version) + _pack_string(h.model_id) + h.weights_sha256


def _chunks(c: Container) -> list[tuple[str, bytes]]:
    """(type, payload) of every chunk of ``c`` in file order; ValueError if ``c`` is invalid."""
    if not isinstance(c, Container):
        raise ValueError(f"expected a Container, got {type(c).__name__}")
    problem = container_problem(c)
    if problem is not None:
        raise ValueError(problem)
    chunks = [(_CHDR, _pack_chdr(c.header))]
    if c.icc_profile is not None:
        chunks.append((_ICCP, c.icc_profile))
    if c.exif is not None:
        chunks.append((_EXIF, c.exif))
    if c.alpha is not None:
        chunks.append((_ALPH, zlib.compress(c.alpha, ALPHA_ZLIB_LEVEL)))
    chunks.extend((_CDAT, _CDAT_PREFIX.pack(t.tile_index, t.symbols_crc32) + t.stream) for t in c.tiles)
    chunks.append((_CEND, b""))
    for ctype, payload in chunks:
        if len(payload) > MAX_CHUNK_LENGTH:
            raise ValueError(f"{ctype} chunk payload of {len(payload)} bytes exceeds the {MAX_CHUNK_LENGTH}-byte limit")
    return chunks


def _pack_chunk(ctype: str, payload: bytes) -> bytes:
    type_bytes = ctype.encode("ascii")
    crc = zlib.crc32(payload, zlib.crc32(type_bytes))
    return _U32.pack(len(payload)) + type_bytes + payload + _U32.pack(crc)


def write_container(container: Container) -> bytes:
    """Serialise ``container`` to the bytes of a ``.cca`` file.

    Raises ``ValueError`` if the container breaks any rule the reader enforces (bad
    header field, tiles not exactly 0..n-1 in order, ICC profile inconsistent with
    ``color_space``, alpha plane of the wrong size, chunk over 1 GiB).
    """
    return SIGNATURE + b"".join(_pack_chunk(t, p) for t, p in _chunks(container))


# ------------------------------------------------------------------------------ reading


def _type_name(type_bytes: bytes) -> str:
    """Printable name of a chunk type for messages: the letters, or a repr of odd bytes."""
    if all(b in _ASCII_LETTERS for b in type_bytes):
        return type_bytes.decode("ascii")
    return repr(type_bytes)


def _as_view(data: BytesLike) -> memoryview:
    """Signature-checked byte view of ``data``."""
    view = memoryview(data).cast("B")
    if len(view) == 0:
        raise FormatError("empty file")
    head = bytes(view[: len(SIGNATURE)])
    if head != SIGNATURE:
        if len(head) < len(SIGNATURE) and SIGNATURE.startswith(head):
            raise FormatError(f"truncated file: only {len(head)} bytes of the {len(SIGNATURE)}-byte signature")
        raise FormatError("not a .cca file (bad signature)")
    return view


def _read_chunk(view: memoryview, pos: int) -> tuple[str, memoryview, int]:
    """Read the chunk at byte ``pos``: (type, payload view, offset of the next chunk)."""
    remaining = len(view) - pos
    if remaining < 8:
        raise FormatError(f"truncated file: chunk header at byte {pos} is incomplete")
    (length,) = _U32.unpack_from(view, pos)
    type_bytes = bytes(view[pos + 4 : pos + 8])
    if length > MAX_CHUNK_LENGTH:
        raise FormatError(f"chunk at byte {pos} declares {length} payload bytes, over the {MAX_CHUNK_LENGTH}-byte limit")
    if length + _CHUNK_FRAMING > remaining:
        raise FormatError(
            f"truncated file: chunk {_type_name(type_bytes)} at byte {pos} needs "
            f"{length + _CHUNK_FRAMING} bytes, only {remaining} remain"
        )
    payload = view[pos + 8 : pos + 8 + length]
    (stored_crc,) = _U32.unpack_from(view, pos + 8 + length)
    if zlib.crc32(payload, zlib.crc32(type_bytes)) != stored_crc:
        raise FormatError(f"CRC mismatch in chunk {_type_name(type_bytes)} at byte {pos} (file is corrupt)")
    if not all(b in _ASCII_LETTERS for b in type_bytes):
        raise FormatError(f"invalid chunk type {type_bytes!r} at byte {pos}")
    return type_bytes.decode("ascii"), payload, pos + _CHUNK_FRAMING + length


def _read_string(payload: memoryview, pos: int, name: str) -> tuple[str, int]:
    """Read a u8-length-prefixed UTF-8 string of CHDR at ``pos``: (value, next position)."""
    if pos >= len(payload):
        raise FormatError(f"CHDR chunk is too short: field {name} is missing")
    end = pos + 1 + payload[pos]
    if end > len(payload):
        raise FormatError(f"CHDR chunk is too short: field {name} declares {payload[pos]} bytes")
    try:
        return bytes(payload[pos + 1 : end]).decode("utf-8"), end
    except UnicodeDecodeError:
        raise FormatError(f"CHDR field {name} is not valid UTF-8") from None


def _decode_choice(name: str, value: int, choices: tuple[str, ...]) -> str:
    if value >= len(choices):
        raise FormatError(f"header field {name} = {value} is out of range 0..{len(choices) - 1}")
    return choices[value]


def _parse_chdr(payload: memoryview) -> Header:
    """Parse and fully validate a CHDR payload."""
    if len(payload) == 0:
        raise FormatError("CHDR chunk is empty")
    if payload[0] != FORMAT_VERSION:
        raise FormatError(version_message(payload[0]))
    if len(payload) < _CHDR_FIXED.size:
        raise FormatError(f"CHDR chunk is too short ({len(payload)} bytes)")
    (version, width, height, color_mode, bit_depth, color_space, context_mode, numeric_mode,
     coder_id, quality, lam, tile_width, tile_height, tile_overlap, latent_align) = _CHDR_FIXED.unpack_from(payload)
    coder_version, pos = _read_string(payload, _CHDR_FIXED.size, "coder_version")
    model_id, pos = _read_string(payload, pos, "model_id")
    if len(payload) - pos < SHA256_BYTES:
        raise FormatError("CHDR chunk is too short: field weights_sha256 is incomplete")
    weights_sha256 = bytes(payload[pos : pos + SHA256_BYTES])
    pos += SHA256_BYTES
    if pos != len(payload):
        raise FormatError(f"CHDR chunk has {len(payload) - pos} trailing bytes after its last field")
    header = Header(
        width=width, height=height,
        color_mode=_decode_choice("color_mode", color_mode, COLOR_MODES),
        bit_depth=bit_depth,
        color_space=_decode_choice("color_space", color_space, COLOR_SPACES),
        context_mode=_decode_choice("context_mode", context_mode, CONTEXT_MODES),
        quality=quality, lam=lam,
        tile_width=tile_width, tile_height=tile_height,
        tile_overlap=tile_overlap, latent_align=latent_align,
        coder_version=coder_version, model_id=model_id, weights_sha256=weights_sha256,
        numeric_mode=numeric_mode, coder_id=coder_id, format_version=version,
    )
    problem = header_problem(header)
    if problem is not None:
        raise FormatError(problem)
    return header


def _check_max_pixels(max_pixels: int) -> None:
    if not is_int(max_pixels) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")


def _read_header_chunk(view: memoryview, max_pixels: int) -> tuple[Header, int]:
    """Parse the CHDR chunk after the signature: (header, offset of the next chunk)."""
    ctype, payload, pos = _read_chunk(view, len(SIGNATURE))
    if ctype != _CHDR:
        raise FormatError(f"first chunk is {ctype!r}, expected 'CHDR'")
    header = _parse_chdr(payload)
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise FormatError(
            f"image is {header.width}x{header.height} = {pixels} pixels, over the limit of "
            f"{max_pixels} pixels (decompression-bomb guard)"
        )
    return header, pos


def _parse_cdat(payload: memoryview, pos: int) -> TilePayload:
    if len(payload) < _CDAT_PREFIX.size:
        raise FormatError(f"CDAT chunk at byte {pos} is too short ({len(payload)} bytes, needs at least 8)")
    tile_index, symbols_crc32 = _CDAT_PREFIX.unpack_from(payload)
    return TilePayload(tile_index, symbols_crc32, bytes(payload[_CDAT_PREFIX.size :]))


def _inflate_alpha(payload: bytes, header: Header) -> bytes:
    """Inflate an aLPH payload to exactly height*width bytes, never producing more."""
    expected = header.width * header.height
    inflater = zlib.decompressobj()
    try:
        plane = inflater.decompress(payload, expected)
        # The first call may stop at `expected` bytes before reading the stream's end;
        # one more byte of room shows whether the stream holds more data.
        extra = b"" if inflater.eof else inflater.decompress(inflater.unconsumed_tail, 1)
    except zlib.error as exc:
        raise FormatError(f"aLPH chunk: corrupt zlib stream ({exc})") from None
    if extra:
        raise FormatError(f"aLPH chunk inflates to more than height*width = {expected} bytes")
    if not inflater.eof:
        raise FormatError("aLPH chunk: zlib stream is truncated")
    if inflater.unused_data:
        raise FormatError("aLPH chunk: bytes after the end of the zlib stream")
    if len(plane) != expected:
        raise FormatError(f"aLPH chunk inflates to {len(plane)} bytes, expected height*width = {expected}")
    return plane


def read_header(data: BytesLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Header:
    """Parse the signature and the CHDR chunk only, validating every header field.

    For ``ccacodec info`` and early checks; the rest of the file is not looked at.
    Raises FormatError for any problem, including width*height over ``max_pixels``.
    """
    _check_max_pixels(max_pixels)
    return _read_header_chunk(_as_view(data), max_pixels)[0]


def read_container(data: BytesLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Container:
    """Parse and validate a whole ``.cca`` file.

    ``max_pixels`` bounds width*height (checked right after CHDR, before anything is
    allocated), which also bounds the inflated alpha plane.  Raises FormatError with a
    one-line message for any corrupt, truncated or unsupported file.
    """
    _check_max_pixels(max_pixels)
    view = _as_view(data)
    header, pos = _read_header_chunk(view, max_pixels)
    tiles: dict[int, TilePayload] = {}
    ancillary: dict[str, bytes] = {}
    skipped: list[str] = []
    while True:
        if pos == len(view):
            raise FormatError(f"truncated file: it ends at byte {pos} without a CEND chunk")
        ctype, payload, next_pos = _read_chunk(view, pos)
        if ctype == _CEND:
            if len(payload) != 0:
                raise FormatError(f"CEND chunk has a {len(payload)}-byte payload, expected none")
            if next_pos != len(view):
                raise FormatError(f"{len(view) - next_pos} trailing bytes after the CEND chunk")
            break
        if ctype == _CDAT:
            tile = _parse_cdat(payload, pos)
            if tile.tile_index in tiles:
                raise FormatError(f"tile index {tile.tile_index} appears twice")
            tiles[tile.tile_index] = tile
        elif ctype in _KNOWN_ANCILLARY:
            if ctype in ancillary:
                raise FormatError(f"chunk {ctype} appears twice")
            ancillary[ctype] = bytes(payload)
        elif ctype == _CHDR:
            raise FormatError(f"second CHDR chunk at byte {pos}")
        elif ctype[0].isupper():
            raise FormatError(
                f"unsupported critical chunk {ctype!r} at byte {pos} (this reader knows CHDR, CDAT, "
                f"CEND; the file may need a newer ccacodec)"
            )
        else:
            skipped.append(ctype)
        pos = next_pos
    alpha = ancillary.get(_ALPH)
    container = Container(
        header=header,
        tiles=tuple(tiles[i] for i in sorted(tiles)),
        icc_profile=ancillary.get(_ICCP),
        exif=ancillary.get(_EXIF),
        alpha=None if alpha is None else _inflate_alpha(alpha, header),
        skipped_chunks=tuple(skipped),
    )
    problem = container_problem(container)
    if problem is not None:
        raise FormatError(problem)
    return container


# ---------------------------------------------------------------------------- reporting


def container_overhead(container: Container) -> int:
    """Bytes of the file :func:`write_container` makes that are not tile stream bytes.

    That is signature, chunk framing, CHDR, ancillary chunks (alpha compressed) and
    the 8-byte CDAT prefixes.  For a container read from a file it equals that file's
    overhead unless the file had skipped chunks or an alpha plane compressed differently.
    """
    chunks = _chunks(container)
    file_bytes = len(SIGNATURE) + sum(_CHUNK_FRAMING + len(p) for _, p in chunks)
    return file_bytes - sum(len(t.stream) for t in container.tiles)


def describe(container: Container) -> dict:
    """JSON-ready summary of ``container`` for ``ccacodec info --json``.

    Keys: ``header`` (every CHDR field; weights_sha256 as hex), ``tile_grid``
    ([rows, cols]), ``tile_count``, ``tile_stream_bytes`` (per tile, by index),
    ``stream_bytes`` (their sum), ``icc_profile_bytes`` / ``exif_bytes`` (int or None),
    ``has_alpha``, ``chunks`` (list of {"type", "length"} in file order as written),
    ``file_bytes``, ``overhead_bytes`` and ``skipped_chunks``.
    """
    chunks = _chunks(container)
    h = container.header
    stream_sizes = [len(t.stream) for t in container.tiles]
    file_bytes = len(SIGNATURE) + sum(_CHUNK_FRAMING + len(p) for _, p in chunks)
    return {
        "header": {
            "format_version": h.format_version,
            "width": h.width,
            "height": h.height,
            "color_mode": h.color_mode,
            "bit_depth": h.bit_depth,
            "color_space": h.color_space,
            "context_mode": h.context_mode,
            "numeric_mode": h.numeric_mode,
            "coder_id": h.coder_id,
            "quality": float(h.quality),
            "lam": float(h.lam),
            "tile_width": h.tile_width,
            "tile_height": h.tile_height,
            "tile_overlap": h.tile_overlap,
            "latent_align": h.latent_align,
            "coder_version": h.coder_version,
            "model_id": h.model_id,
            "weights_sha256": h.weights_sha256.hex(),
        },
        "tile_grid": list(h.tile_grid),
        "tile_count": len(container.tiles),
        "tile_stream_bytes": stream_sizes,
        "stream_bytes": sum(stream_sizes),
        "icc_profile_bytes": None if container.icc_profile is None else len(container.icc_profile),
        "exif_bytes": None if container.exif is None else len(container.exif),
        "has_alpha": container.alpha is not None,
        "chunks": [{"type": t, "length": len(p)} for t, p in chunks],
        "file_bytes": file_bytes,
        "overhead_bytes": file_bytes - sum(stream_sizes),
        "skipped_chunks": list(container.skipped_chunks),
    }
