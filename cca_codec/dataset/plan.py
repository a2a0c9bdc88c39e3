"""What a dataset run has to do: the source files under SRC, the output each gets under DST, and
which of them are done already (skipped) or fail before any coding (reported at once).

Sources are the regular files under SRC whose extension (any case) is in the run's set; names
starting with "." (hidden files, and the temporary files of an atomic write) are left out. Each
output mirrors its source's relative path with the suffix replaced (``a/b.png`` -> ``a/b.cca``).
A source is done when the manifest's last record of it says ``ok`` with the same settings, the
same source size and modification time, and its output file still exists.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cca_codec.base.errors import InputError

from .manifest import FAILED, OK, Record, new_record

CCA_EXTENSIONS = frozenset({".cca"})
"""Extensions of the files ``decode-dataset`` decodes."""


@dataclass(frozen=True)
class Source:
    """One file to code: its path relative to SRC ("/" separated), size and modification time."""

    path: str
    size: int
    mtime_ns: int


@dataclass
class Plan:
    """A run's work: ``todo`` goes to the engine, ``done`` keeps its earlier records, ``failed``
    holds the records of sources that cannot be coded at all (with the reason)."""

    todo: list[Source] = field(default_factory=list)
    done: list[Record] = field(default_factory=list)
    failed: list[Record] = field(default_factory=list)


def output_path(path: str, suffix: str) -> str:
    """The output of source ``path`` (relative, "/" separated): the same path with ``suffix``."""
    return PurePosixPath(path).with_suffix(suffix).as_posix()


def make_plan(
    src: Path,
    dst: Path,
    extensions: frozenset[str],
    suffix: str,
    settings: Mapping[str, Any],
    previous: Mapping[str, Record],
    label: str,
) -> Plan:
    """Plan a run over ``src`` (absolute) writing to ``dst`` (absolute).

    ``settings``: the manifest fields a done record must match (e.g. quality, context, model);
    they are also written into the records of sources that fail here. ``previous``: the
    manifest's records by path. ``label``: SRC as the user wrote it, for messages.
    """
    plan = Plan()
    owners: dict[str, str] = {}
    sources, unlisted = _list_sources(src, extensions, label)
    for path, reason in unlisted:
        plan.failed.append(_failure(path, None, reason, settings))
    for source in sources:
        output = output_path(source.path, suffix)
        if output in owners:
            reason = f"{_join(label, source.path)}: its output {output} is also that of {owners[output]}; rename one of them"
            plan.failed.append(_failure(source.path, output, reason, settings))
            continue
        owners[output] = source.path
        record = previous.get(source.path)
        if record is not None and _is_done(record, source, output, settings, dst):
            plan.done.append(record)
        else:
            plan.todo.append(source)
    return plan


def _list_sources(root: Path, extensions: frozenset[str], label: str) -> tuple[list[Source], list[tuple[str, str]]]:
    """The codable files under ``root`` sorted by path, and ``(path, reason)`` of those that are
    not (not a regular file, unreadable, or in a directory that cannot be listed)."""
    sources: list[Source] = []
    unlisted: list[tuple[str, str]] = []

    def unreadable_dir(exc: OSError) -> None:
        where = Path(os.path.relpath(exc.filename, root)).as_posix() if exc.filename else "."
        unlisted.append((where, f"cannot list directory {_join(label, where)}: {exc.strerror or exc}"))

    for directory, dirnames, filenames in os.walk(root, onerror=unreadable_dir):
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in extensions:
                continue
            full = os.path.join(directory, name)
            path = Path(os.path.relpath(full, root)).as_posix()
            info = _readable_stat(full, _join(label, path))
            if isinstance(info, str):
                unlisted.append((path, info))
                continue
            sources.append(Source(path, info.st_size, info.st_mtime_ns))
    sources.sort(key=lambda s: s.path)
    return sources, unlisted


def _readable_stat(full: str, label: str) -> os.stat_result | str:
    """The status of the file ``full``, or why it cannot be read: checked before the engine sees
    it, so that one bad entry does not fail the engine's read of its neighbours."""
    try:
        info = os.stat(full)
    except OSError as exc:
        return f"{label}: {exc.strerror or exc}"
    if not stat.S_ISREG(info.st_mode):
        return f"{label} is not a regular file"
    if not os.access(full, os.R_OK):
        return f"{label}: permission denied"
    return info


def _is_done(record: Record, source: Source, output: str, settings: Mapping[str, Any], dst: Path) -> bool:
    """Whether ``record`` shows ``source`` coded to ``output`` with ``settings``, and that output exists."""
    return (
        record.get("status") == OK
        and record.get("output") == output
        and record.get("source_bytes") == source.size
        and record.get("source_mtime_ns") == source.mtime_ns
        and all(record.get(key) == value for key, value in settings.items())
        and (dst / output).is_file()
    )


def _failure(path: str, output: str | None, reason: str, settings: Mapping[str, Any]) -> Record:
    """The record of a source that fails before coding (exit code 3: unreadable input)."""
    return new_record(path=path, output=output, status=FAILED, error=reason, exit_code=InputError.exit_code, **settings)


def _join(label: str, path: str) -> str:
    """``path`` under SRC as the user wrote SRC, for messages."""
    return os.path.join(label, path)
