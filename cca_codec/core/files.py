"""Coding one image or one file, as the command line, the Pillow plugin, the dataset engine and
``ccacodec compare`` all do it: the encode options and their one check, one model cache, and the
encode and decode of an image in memory or of a file on disk.

    options = EncodeOptions.from_options(quality=None, target_bpp=0.5, context="grouped")
    encoded = encode(load_image("photo.png"), load_model(), options)     # .data, .quality, .rate
    header, image = decode(encoded.data, ModelCache())                    # the model the file names

:func:`check_options` raises every UsageError that :func:`~cca_codec.core.codec.encode_image`
would raise for the options alone (quality, context mode, tile size, effort), whatever the image.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cca_codec.base.errors import UsageError
from cca_codec.base.fileio import STDIN, read_input, write_output
from cca_codec.format.container import DEFAULT_MAX_PIXELS, read_container
from cca_codec.format.contents import Header
from cca_codec.format.tiling import choose_layout
from cca_codec.image.io import DecodedImage, SourceImage, load_image, save_image
from cca_codec.image.metrics import bits_per_pixel
from cca_codec.nn.model import CCAModel

from .batch import check_not_exists
from .checkpoint import LoadedModel, QualityNetwork, load_model, resolve_model_dir
from .codec import check_context, decode_image, default_context, encode_image
from .ratecontrol import RateResult, Target, encode_to_target
from .refine import effort_schedule

Progress = Callable[[int, int], None]
"""``progress(done, total)``: refinement steps of one image (effort above 1)."""


# ------------------------------------------------------------------------ encode options


@dataclass(frozen=True)
class EncodeOptions:
    """How to encode: at ``quality`` (None: the model's default) or, with a ``target``, at the
    quality rate control finds for it; and the coding options of ``encode_image`` (``context``
    None: the model's default mode; ``tile`` None: automatic)."""

    quality: float | None = None
    target: Target | None = None
    context: str | None = None
    tile: int | None = None
    effort: int = 1
    device: str = "auto"
    precision: str = "auto"

    @classmethod
    def from_options(
        cls,
        *,
        quality: float | None = None,
        target_bpp: float | None = None,
        target_psnr: float | None = None,
        target_size: int | None = None,
        **coding: Any,
    ) -> EncodeOptions:
        """The options as ``ccacodec encode`` and ``Image.save`` take them: a quality or one rate
        target, not both (UsageError, see :meth:`Target.from_options`)."""
        target = Target.from_options(bpp=target_bpp, psnr=target_psnr, size=target_size, quality=quality)
        return cls(quality=quality, target=target, **coding)


@dataclass(frozen=True)
class CheckedOptions:
    """What :func:`check_options` found: the quality (the default one under a rate target), the
    context mode, and the network that codes at that quality."""

    quality: float
    context: str
    network: QualityNetwork


def check_options(model: LoadedModel, options: EncodeOptions) -> CheckedOptions:
    """Check ``options`` against ``model``, in ``encode_image``'s order: quality, context mode, tile
    size, effort (UsageError). Image-dependent limits (a tile size too large for an image) are
    left to the encoder."""
    quality = model.check_quality(model.default_quality if options.quality is None else options.quality)
    network = model.at_quality(quality)
    context = check_context(network.net, options.context or default_context(model))
    check_tile(options.tile)
    effort_schedule(options.effort)
    return CheckedOptions(quality, context, network)


def check_tile(tile: int | None) -> None:
    """Refuse a tile size that no image can use (not a multiple of the latent alignment)."""
    try:
        choose_layout(1, 1, tile, CCAModel.alignment)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# ----------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class Encoded:
    """A ``.cca`` file in memory, the quality and context mode it was coded at, and the rate
    control's result (None at a given quality)."""

    data: bytes
    quality: float
    context: str
    rate: RateResult | None = None


def encode(image: SourceImage, model: LoadedModel, options: EncodeOptions, progress: Progress | None = None) -> Encoded:
    """Encode ``image`` under ``options`` (checked first: :func:`check_options`)."""
    checked = check_options(model, options)
    coding = {
        "context": checked.context, "device": options.device, "tile": options.tile, "precision": options.precision,
        "effort": options.effort, "progress": progress,
    }
    if options.target is None:
        return Encoded(encode_image(image, model, quality=checked.quality, **coding), checked.quality, checked.context)
    rate = encode_to_target(image, model, options.target, **coding)
    return Encoded(rate.data, rate.quality, checked.context, rate)


@dataclass(frozen=True)
class EncodedFile:
    """An image file encoded to a ``.cca`` file: the image read, the result, and the seconds of the
    encoding alone (reading and writing not counted)."""

    image: SourceImage
    encoded: Encoded
    seconds: float

    @property
    def bpp(self) -> float:
        """Bits per pixel of the ``.cca`` file."""
        return bits_per_pixel(len(self.encoded.data), self.image.width, self.image.height)


def encode_file(
    src: str,
    dst: str,
    model: LoadedModel,
    options: EncodeOptions,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = True,
    progress: Progress | None = None,
) -> EncodedFile:
    """Encode the image file ``src`` ("-": standard input) to ``dst`` ("-": standard output).

    Without ``overwrite`` an existing ``dst`` is refused before anything is read. The file is
    written atomically (:func:`~cca_codec.base.fileio.write_output`).
    """
    check_not_exists(dst, not overwrite)
    image = load_image(read_input(src) if src == STDIN else src, max_pixels=max_pixels)
    start = time.perf_counter()
    encoded = encode(image, model, options, progress)
    seconds = time.perf_counter() - start
    write_output(dst, encoded.data, overwrite=overwrite)
    return EncodedFile(image, encoded, seconds)


# ----------------------------------------------------------------------------- decoding


class ModelCache:
    """Models loaded once each, by model directory and the modification time of its model.json
    (a model installed again in the same place is read again).

    ``forced``: the model (id or directory, loaded now) that every file is decoded with, instead
    of the one each file names; it must then be the model the files were made with.
    """

    def __init__(self, forced: str | os.PathLike[str] | None = None) -> None:
        self._models: dict[tuple[Path, int], LoadedModel] = {}
        self.forced = None if forced is None else self.load(forced)

    def load(self, model: str | os.PathLike[str] | None) -> LoadedModel:
        """The model with this id or directory (None: the default model); ModelError when missing."""
        directory = resolve_model_dir(model)
        key = (directory, (directory / "model.json").stat().st_mtime_ns)
        loaded = self._models.get(key)
        if loaded is None:
            loaded = self._models[key] = load_model(directory)
        return loaded

    def for_file(self, header: Header) -> LoadedModel:
        """The forced model, or the one the file with ``header`` names."""
        return self.forced if self.forced is not None else self.load(header.model_id)


def read_for_decoding(data: bytes, models: ModelCache, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Header, LoadedModel]:
    """The header of the ``.cca`` data and the model to decode it with. The whole container is
    checked first: a corrupt file is a FormatError (exit 4) before a model is looked for."""
    header = read_container(data, max_pixels=max_pixels).header
    return header, models.for_file(header)


def decode(
    data: bytes, models: ModelCache, *, device: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS, precision: str = "auto"
) -> tuple[Header, DecodedImage]:
    """Decode ``.cca`` data with the model it names (or ``models.forced``); its header and image."""
    header, model = read_for_decoding(data, models, max_pixels)
    return header, decode_image(data, model, device=device, max_pixels=max_pixels, precision=precision)


@dataclass(frozen=True)
class DecodedFile:
    """A ``.cca`` file decoded to an image file: the image, and the seconds of the decoding alone
    (reading, the model and writing not counted)."""

    image: DecodedImage
    seconds: float


def decode_file(
    src: str,
    dst: str,
    models: ModelCache,
    *,
    device: str = "auto",
    precision: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = True,
) -> DecodedFile:
    """Decode the ``.cca`` file ``src`` ("-": standard input) to the image file ``dst`` ("-":
    standard output as PNG), in the format its extension names (see :func:`save_image`)."""
    check_not_exists(dst, not overwrite)
    data = read_input(src)
    _, model = read_for_decoding(data, models, max_pixels)
    start = time.perf_counter()
    image = decode_image(data, model, device=device, max_pixels=max_pixels, precision=precision)
    seconds = time.perf_counter() - start
    save_image(image, dst, overwrite=overwrite, threads=torch.get_num_threads())
    return DecodedFile(image, seconds)
