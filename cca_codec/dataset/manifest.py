"""The manifest of a dataset run: one JSON object per line (JSONL), one line per source file.

Every record has the keys of :data:`FIELDS` (``None`` where a value is unknown, e.g. the size
of a file that failed):

path, output
    the source file and the file written, relative to SRC and DST ("/" separated).
status, error, exit_code
    ``"ok"``, or ``"failed"`` with the one-line message and the exit code ``ccacodec encode`` /
    ``decode`` would have given for that file (see :mod:`cca_codec.base.errors`).
bytes, width, height, bpp
    the size of the output file, the image size, and the bits per pixel of the ``.cca`` file.
quality, context, model, weights, effort
    the coding settings (``weights``: the first 16 hex digits of the weights' sha256; ``effort``: the
    encoder effort, 1..9, None for decoding; a record of a manifest written before efforts existed
    reads as effort 1, which is how it was coded).
seconds, notes
    coding time of the file, and what the input policy changed (as ``ccacodec encode`` says).
source_bytes, source_mtime_ns
    size and modification time of the source when it was coded (a changed source is redone).

While a run goes, records are appended to the file as files finish, so an interrupted run keeps
what it did; the last record of a path wins when the manifest is read, and a finished run
rewrites the file atomically with one record per source file, sorted by path.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from cca_codec.base.errors import InputError
from cca_codec.base.fileio import atomic_write

MANIFEST_NAME = "manifest.jsonl"
"""The manifest's file name in DST."""

OK = "ok"
FAILED = "failed"
FIELDS = (
    "path", "output", "status", "error", "exit_code", "bytes", "width", "height", "bpp",
    "quality", "context", "model", "weights", "effort", "seconds", "notes", "source_bytes", "source_mtime_ns",
)

Record = dict[str, Any]
"""One manifest line as a dictionary with the keys of :data:`FIELDS`."""


def new_record(**values: Any) -> Record:
    """A record with every field of :data:`FIELDS`, ``values`` set and the others ``None``."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown manifest fields: {sorted(unknown)}")
    return {name: values.get(name) for name in FIELDS}


def read_manifest(path: Path) -> dict[str, Record]:
    """The records of the manifest at ``path`` by source path (the last record of a path wins).

    A missing manifest is empty; an unparsable line (the end of an interrupted write) is skipped.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    records: dict[str, Record] = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("path"), str):
            if "effort" not in record and record.get("quality") is not None:
                record["effort"] = 1  # encoded before the effort levels, all at what is now effort 1
            records[record["path"]] = record
    return records


def write_manifest(path: Path, records: Iterable[Record]) -> None:
    """Replace the manifest at ``path`` atomically with ``records``, sorted by source path."""
    lines = [_line(record) for record in sorted(records, key=lambda r: r["path"])]
    atomic_write(path, "".join(lines).encode("utf-8"))


class ManifestJournal:
    """Appends records to the manifest as files finish (flushed after every :meth:`add`)."""

    def __init__(self, path: Path) -> None:
        try:
            self._stream: IO[str] = open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
        self._path = path

    def add(self, records: Iterable[Record]) -> None:
        """Append ``records`` and flush them to the operating system."""
        try:
            self._stream.writelines(_line(record) for record in records)
            self._stream.flush()
        except OSError as exc:
            raise InputError(f"cannot write {self._path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Close the file."""
        self._stream.close()

    def __enter__(self) -> ManifestJournal:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _line(record: Record) -> str:
    """``record`` as one JSON line, keys in the order of :data:`FIELDS`."""
    return json.dumps({name: record.get(name) for name in FIELDS}, ensure_ascii=False) + "\n"
