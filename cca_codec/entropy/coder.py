"""The symbol stream: integers coded with frozen tables into one constriction range-coder stream.

Symbols are coded step by step. Within a step, the symbols are grouped by table index (stable
order, ascending index), each group coded i.i.d. with its table's model and followed by the
escapes of that group. The decoder, knowing the same table indices, mirrors this exactly.
A CRC-32 over every symbol (int32 little-endian, in coding order) lets the decoder report a
desynchronised stream instead of returning a wrong picture.
"""
from __future__ import annotations

import zlib
from importlib.metadata import version

import constriction
import numpy as np

from cca_codec.base.errors import CodecError, FormatError

from .tables import CDFTables

Uniform = constriction.stream.model.Uniform
RangeEncoder = constriction.stream.queue.RangeEncoder
RangeDecoder = constriction.stream.queue.RangeDecoder

CODER_VERSION = f"constriction {version('constriction')}"
MAX_SYMBOL_MAGNITUDE = 1 << 30
_ESCAPE_BITS = 33          # escape payloads have 0..32 significant bits
_CHUNK_BITS = 16           # escape bits are coded in chunks of at most this many


def _panic_types() -> tuple[type[BaseException], ...]:
    """constriction signals some errors with pyo3's PanicException, a BaseException."""
    try:
        from pyo3_runtime import PanicException  # type: ignore[import-not-found]

        return (Exception, PanicException)
    except ImportError:
        return (Exception,)


CODER_FAILURES = _panic_types()


def _group(table_index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable sort order of the symbols by table, the tables used (ascending), and each group's size.

    `table_index`: 1-D, non-negative. The keys are sorted as 8- or 16-bit integers, which NumPy's
    stable sort does by radix (20x faster than a merge sort of int64 keys at 30,000 symbols)."""
    counts = np.bincount(table_index)
    used = np.flatnonzero(counts)
    keys = table_index.astype(np.uint8 if counts.size <= 1 << 8 else np.uint16 if counts.size <= 1 << 16 else np.int64)
    return np.argsort(keys, kind="stable"), used, counts[used]


class SymbolEncoder:
    """Encodes groups of integer symbols into one range-coder stream."""

    def __init__(self) -> None:
        self._coder = RangeEncoder()
        self._crc = 0
        self.count = 0

    def encode(self, symbols: np.ndarray, table_index: np.ndarray, tables: CDFTables) -> None:
        """symbols, table_index: 1-D integer arrays of equal length."""
        symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
        table_index = np.asarray(table_index, dtype=np.int64).reshape(-1)
        if symbols.size and np.abs(symbols).max() >= MAX_SYMBOL_MAGNITUDE:
            raise CodecError("latent value out of the codable range (is the input image valid?)")
        self._crc = zlib.crc32(symbols.astype("<i4").tobytes(), self._crc)
        self.count += symbols.size
        order, used, counts = _group(table_index)
        start = 0
        for j, n in zip(used.tolist(), counts.tolist()):
            values = symbols[order[start : start + n]] - tables.offset[j]
            start += n
            esc = tables.escape_value(j)
            escaped = (values < 0) | (values >= esc)
            self._coder.encode(np.where(escaped, esc, values).astype(np.int32), tables.model(j))
            for v in values[escaped].tolist():
                self._encode_escape(-2 * v - 1 if v < 0 else 2 * (v - esc))

    def _encode_escape(self, raw: int) -> None:
        """raw >= 0: its bit length, then its bits below the leading one, in 16-bit chunks."""
        nbits = raw.bit_length()
        self._coder.encode(nbits, Uniform(_ESCAPE_BITS))
        rest, remaining = raw, max(nbits - 1, 0)
        while remaining > 0:
            width = min(remaining, _CHUNK_BITS)
            remaining -= width
            self._coder.encode((rest >> remaining) & ((1 << width) - 1), Uniform(1 << width))

    @property
    def crc32(self) -> int:
        return self._crc

    def finish(self) -> bytes:
        """The compressed stream: the coder's 32-bit words, little-endian."""
        return self._coder.get_compressed().astype("<u4").tobytes()


class SymbolDecoder:
    """Decodes what SymbolEncoder wrote, given the same table indices in the same order."""

    def __init__(self, stream: bytes) -> None:
        if len(stream) % 4:
            raise FormatError("corrupt payload: stream length is not a multiple of 4 bytes")
        self._coder = RangeDecoder(np.frombuffer(stream, dtype="<u4").astype(np.uint32))
        self._crc = 0
        self.count = 0

    def decode(self, table_index: np.ndarray, tables: CDFTables) -> np.ndarray:
        """Returns the int64 symbols for `table_index` (1-D), in the same order."""
        table_index = np.asarray(table_index, dtype=np.int64).reshape(-1)
        symbols = np.empty(table_index.size, dtype=np.int64)
        order, used, counts = _group(table_index)
        start = 0
        try:
            for j, n in zip(used.tolist(), counts.tolist()):
                esc = tables.escape_value(j)
                values = np.asarray(self._coder.decode(tables.model(j), n), dtype=np.int64)
                for k in np.flatnonzero(values == esc).tolist():
                    raw = self._decode_escape()
                    values[k] = -(raw + 1) // 2 if raw % 2 else raw // 2 + esc
                symbols[order[start : start + n]] = values + tables.offset[j]
                start += n
        except CODER_FAILURES as exc:  # a corrupt stream can make the coder fail
            raise FormatError(f"corrupt payload: the range decoder failed ({type(exc).__name__})") from None
        if symbols.size and np.abs(symbols).max() >= MAX_SYMBOL_MAGNITUDE:
            raise FormatError("corrupt payload: decoded symbol out of range")
        self._crc = zlib.crc32(symbols.astype("<i4").tobytes(), self._crc)
        self.count += symbols.size
        return symbols

    def _decode_escape(self) -> int:
        nbits = int(self._coder.decode(Uniform(_ESCAPE_BITS)))
        if nbits == 0:
            return 0
        raw, remaining = 1, nbits - 1
        while remaining > 0:
            width = min(remaining, _CHUNK_BITS)
            remaining -= width
            raw = (raw << width) | int(self._coder.decode(Uniform(1 << width)))
        return raw

    @property
    def crc32(self) -> int:
        return self._crc
