"""The work of one engine worker: callable classes that load the model once and code batches of files.

Ray Data builds one instance per worker (``map_batches`` with an actor pool) and calls it with
batches of ``{"path": [...], "bytes": [...]}`` as ``read_binary_files(include_paths=True)``
produces them. Each file is coded with the same functions as ``ccacodec encode`` / ``decode``
(:func:`~cca_codec.core.files.encode`, :func:`~cca_codec.core.files.decode`), written with
:func:`~cca_codec.base.fileio.atomic_write` under DST at its mirrored path, and becomes one manifest
record. A failing file becomes a ``failed`` record; it never stops the batch. The result is one
column, ``record``, of JSON strings (a schema that every record fits, whatever its values).
"""
from __future__ import annotations

import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cca_codec.base.errors import CodecError, InputError, one_line
from cca_codec.base.fileio import atomic_write
from cca_codec.core.checkpoint import load_model
from cca_codec.core.files import EncodeOptions, ModelCache, decode, encode
from cca_codec.image.io import encode_png, load_image
from cca_codec.image.metrics import bits_per_pixel

from .manifest import FAILED, OK, Record, new_record
from .plan import output_path

Batch = Mapping[str, Any]
"""A batch as Ray Data hands it to a callable class: columns ``path`` and ``bytes``."""

WEIGHTS_DIGITS = 16
"""Hex digits of the weights' sha256 kept in the manifest's ``weights`` field."""


@dataclass(frozen=True)
class Roots:
    """Where a worker reads and writes: SRC and DST as absolute paths, and SRC as the user wrote it."""

    src: str
    dst: str
    label: str


@dataclass(frozen=True)
class EncodeSettings:
    """How every image of an ``encode-dataset`` run is coded.

    ``model`` is what each worker loads (an id, looked up on the worker's model search path, or
    an absolute model directory; None: the default model). ``device`` is ``"cpu"`` or ``"cuda"``;
    ``threads`` the torch threads of a worker.
    """

    model: str | None
    quality: float
    context: str
    tile: int | None
    max_pixels: int
    device: str
    threads: int
    effort: int = 1


@dataclass(frozen=True)
class DecodeSettings:
    """How every file of a ``decode-dataset`` run is decoded (``model``: None for the model each
    file names, else the one every file must have been made with)."""

    model: str | None
    max_pixels: int
    device: str
    threads: int


class _FileWorker(ABC):
    """What the encode and decode workers share: the per-file loop, the output path, failures."""

    suffix = ""

    def __init__(self, roots: Roots, threads: int) -> None:
        self.roots = roots
        torch.set_num_threads(threads)

    def __call__(self, batch: Batch) -> dict[str, np.ndarray]:
        """Code every file of ``batch``; one JSON record per file, in the batch's order."""
        records = [self._record(str(path), bytes(data)) for path, data in zip(batch["path"], batch["bytes"])]
        return {"record": np.array([json.dumps(record) for record in records], dtype=object)}

    def _record(self, path: str, data: bytes) -> Record:
        """Code one file read from ``path`` (absolute) and return its manifest record."""
        rel = Path(os.path.relpath(path, self.roots.src)).as_posix()
        output = output_path(rel, self.suffix)
        label = os.path.join(self.roots.label, rel)
        start = time.perf_counter()
        try:
            values = self._code(data, label, os.path.join(self.roots.dst, output))
        except CodecError as exc:
            return self._failure(rel, output, label, str(exc), exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - a bug on one file is reported and the others go on
            return self._failure(rel, output, label, f"{type(exc).__name__}: {exc}", CodecError.exit_code)
        return new_record(path=rel, output=output, status=OK, seconds=time.perf_counter() - start, **values)

    @abstractmethod
    def _code(self, data: bytes, label: str, target: str) -> dict[str, Any]:
        """Code ``data`` (the file ``label``), write ``target``; return the record's other fields."""

    def _settings(self) -> dict[str, Any]:
        """The coding settings a failed record carries."""
        return {}

    def _failure(self, rel: str, output: str, label: str, message: str, code: int) -> Record:
        """The record of a file that failed, its message one line that names the file."""
        message = one_line(message)
        if label not in message:
            message = f"{label}: {message}"
        return new_record(path=rel, output=output, status=FAILED, error=message, exit_code=code, **self._settings())


class EncodeWorker(_FileWorker):
    """Encodes image files to ``.cca`` files with one model, loaded when the worker starts."""

    suffix = ".cca"

    def __init__(self, roots: Roots, settings: EncodeSettings) -> None:
        super().__init__(roots, settings.threads)
        self.settings = settings
        self.model = load_model(settings.model)
        self.weights = self.model.at_quality(settings.quality).weights_sha256.hex()[:WEIGHTS_DIGITS]
        self.options = EncodeOptions(
            quality=settings.quality, context=settings.context, tile=settings.tile, effort=settings.effort, device=settings.device
        )

    def _settings(self) -> dict[str, Any]:
        s = self.settings
        return {
            "quality": s.quality, "context": s.context, "model": self.model.model_id, "weights": self.weights, "effort": s.effort,
        }

    def _code(self, data: bytes, label: str, target: str) -> dict[str, Any]:
        s = self.settings
        image = load_image(data, max_pixels=s.max_pixels, name=label)
        coded = encode(image, self.model, self.options).data
        _write(target, coded)
        return {
            **self._settings(),
            "bytes": len(coded), "width": image.width, "height": image.height,
            "bpp": bits_per_pixel(len(coded), image.width, image.height), "notes": list(image.notes),
        }


class DecodeWorker(_FileWorker):
    """Decodes ``.cca`` files to PNG, each with the model it names (loaded once per model)."""

    suffix = ".png"

    def __init__(self, roots: Roots, settings: DecodeSettings) -> None:
        super().__init__(roots, settings.threads)
        self.settings = settings
        self.models = ModelCache(forced=settings.model)

    def _code(self, data: bytes, label: str, target: str) -> dict[str, Any]:
        s = self.settings
        # The whole container is checked first, as `ccacodec decode` does: a corrupt file is exit 4.
        header, image = decode(data, self.models, device=s.device, max_pixels=s.max_pixels)
        png = encode_png(image, threads=s.threads)
        _write(target, png)
        return {
            "bytes": len(png), "width": header.width, "height": header.height,
            "bpp": bits_per_pixel(len(data), header.width, header.height),
            "quality": header.quality, "context": header.context_mode, "model": header.model_id,
            "weights": header.weights_sha256.hex()[:WEIGHTS_DIGITS],
        }


def _write(target: str, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically, creating its directory first."""
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create directory {os.path.dirname(target)}: {exc.strerror or exc}") from None
    atomic_write(target, data)
