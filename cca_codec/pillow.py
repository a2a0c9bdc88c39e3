"""Pillow plugin for ``.cca`` files: importing this module registers the format ``CCA`` with Pillow.

    import cca_codec.pillow                           # once per process: Pillow has no plugin discovery
    from PIL import Image

    with Image.open("photo.cca") as img:             # reads and checks the container, decodes nothing
        img.load()                                    # decodes: the model the file names, device "auto"
    img.save("copy.cca", quality=5, context="grouped", model="cca-compact", device="cpu", tile=None, effort=1)
    img.save("small.cca", target_bpp=0.3)            # or target_psnr=, target_size= (cca_codec.core.ratecontrol)

Opening reads the whole file and validates every chunk (no network runs); the header is then in
``img.cca_header``, the ICC profile and EXIF in ``img.info``. The image's mode is ``L``, ``LA``,
``RGB`` or ``RGBA`` as the file was coded. Saving applies the command line's input policy
(:func:`cca_codec.image.io.image_from_pil`): grayscale stays gray, alpha is kept losslessly, the
ICC profile and EXIF are carried (EXIF orientation applied first); what the policy changes is
reported as a ``UserWarning``. Models are loaded once per process and model directory.

Errors are Pillow's usual types with ccacodec's one-line message: a damaged file raises
``PIL.UnidentifiedImageError`` from ``Image.open`` (``DecompressionBombError`` for too many
pixels), a payload that fails to decode or a missing model raises ``OSError`` from ``load()``;
on saving, a bad option raises ``ValueError``, an unusable image or model ``OSError``. The image
is encoded completely before anything is written (Pillow removes a file it created for a save
that fails; for atomic replacement of existing files use the ``ccacodec`` command line).
"""
from __future__ import annotations

import os
import warnings
from typing import IO, Any

from PIL import Image, ImageFile, UnidentifiedImageError

from cca_codec.base.errors import CodecError, UsageError
from cca_codec.core.checkpoint import LoadedModel
from cca_codec.core.files import EncodeOptions, ModelCache, decode, encode
from cca_codec.format.container import SIGNATURE, read_container, read_header
from cca_codec.format.contents import MAX_DIMENSION, Header
from cca_codec.image.io import image_from_pil

FORMAT = "CCA"
EXTENSION = ".cca"
MIME = "image/x-cca"
_NO_PIXEL_LIMIT = MAX_DIMENSION * MAX_DIMENSION  # Pillow's own limit applies instead (_check_pixels)
_MODELS = ModelCache()
"""The models of this process, loaded once per directory and model.json version."""


def _accept(prefix: bytes) -> bool:
    """Whether a file starts with the ``.cca`` signature."""
    return prefix.startswith(SIGNATURE)


def _mode(header: Header, has_alpha: bool) -> str:
    """The Pillow mode of a decoded file: L, LA, RGB or RGBA."""
    base = "L" if header.color_mode == "gray" else "RGB"
    return base + "A" if has_alpha else base


def _check_pixels(header: Header) -> None:
    """Pillow's decompression-bomb error (over twice ``Image.MAX_IMAGE_PIXELS``), raised before the
    alpha plane is inflated; Pillow itself warns above ``MAX_IMAGE_PIXELS`` once the file is open."""
    limit = Image.MAX_IMAGE_PIXELS
    pixels = header.width * header.height
    if limit is not None and pixels > 2 * limit:
        raise Image.DecompressionBombError(
            f"Image size ({pixels} pixels) exceeds limit of {2 * limit} pixels, could be decompression bomb DOS attack."
        )


class CcaImageFile(ImageFile.ImageFile):
    """A ``.cca`` file opened by Pillow; decoded by :class:`CcaDecoder` on ``load()``."""

    format = FORMAT
    format_description = "ccacodec learned image"
    cca_header: Header

    def _open(self) -> None:
        assert self.fp is not None
        data = self.fp.read()
        label = _label(self.filename, "the .cca data")
        try:
            header = read_header(data, max_pixels=_NO_PIXEL_LIMIT)
            _check_pixels(header)
            container = read_container(data, max_pixels=_NO_PIXEL_LIMIT)
        except CodecError as exc:
            raise UnidentifiedImageError(f"{label}: {exc}") from None
        self.cca_header = header
        self._size = (header.width, header.height)
        self._mode = _mode(header, container.alpha is not None)
        if container.icc_profile:
            self.info["icc_profile"] = container.icc_profile
        if container.exif:
            self.info["exif"] = container.exif
        # The whole file, from offset 0, goes to the decoder (a plain tuple: Pillow 10 has no _Tile).
        self.tile = [(FORMAT, (0, 0, *self.size), 0, (label,))]  # type: ignore[list-item]


class CcaDecoder(ImageFile.PyDecoder):
    """Decodes a whole ``.cca`` file (read from the file object) with the model it names."""

    _pulls_fd = True

    def decode(self, buffer: bytes) -> tuple[int, int]:
        assert self.fd is not None
        (label,) = self.args
        data = self.fd.read()
        try:
            _, image = decode(data, _MODELS, max_pixels=_NO_PIXEL_LIMIT)
            decoded = image.to_pil()
        except CodecError as exc:
            raise OSError(f"{label}: {exc}") from None
        self.set_as_raw(decoded.tobytes(), decoded.mode)
        return -1, 0


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    """Pillow's save handler: encode ``im`` under the input policy with ``im.encoderinfo``'s options
    (quality, target_bpp, target_psnr, target_size, context, model, device, tile, effort)."""
    label = _label(filename, "image")
    options: dict[str, Any] = im.encoderinfo
    try:
        data = _encode(im, options, label)
    except UsageError as exc:
        raise ValueError(f"{label}: {exc}") from None
    except CodecError as exc:
        raise OSError(f"{label}: {exc}") from None
    fp.write(data)


def _encode(im: Image.Image, options: dict[str, Any], label: str) -> bytes:
    """The ``.cca`` bytes of ``im`` under the save ``options``."""
    coding = EncodeOptions.from_options(
        quality=options.get("quality"), target_bpp=options.get("target_bpp"), target_psnr=options.get("target_psnr"),
        target_size=options.get("target_size"), context=options.get("context"), device=options.get("device", "auto"),
        tile=options.get("tile"), effort=options.get("effort", 1),
    )
    model = options.get("model")
    loaded = model if isinstance(model, LoadedModel) else _MODELS.load(model)
    image = image_from_pil(im, label)
    for note in image.notes:
        warnings.warn(f"{label}: {note}", UserWarning)
    return encode(image, loaded, coding).data


def _label(filename: str | bytes | None, default: str) -> str:
    """How a file is named in messages: its name, or ``default`` for a file object."""
    return os.fsdecode(filename) if filename else default


Image.register_open(FORMAT, CcaImageFile, _accept)
Image.register_save(FORMAT, _save)
Image.register_extension(FORMAT, EXTENSION)
Image.register_mime(FORMAT, MIME)
Image.register_decoder(FORMAT, CcaDecoder)
