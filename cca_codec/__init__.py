"""ccacodec: a learned image codec built on the CCA-loss network (Han et al., NeurIPS 2024).

The public API, imported on first use (``import cca_codec`` loads neither torch nor NumPy)::

    import cca_codec

    model = cca_codec.load_model()                               # the default model (or an id, a directory)
    image = cca_codec.load_image("photo.png")
    data = cca_codec.encode_image(image, model, quality=4)       # .cca bytes
    small = cca_codec.encode_to_target(image, model, cca_codec.Target("bpp", 0.3)).data
    cca_codec.save_image(cca_codec.decode_image(data, model), "copy.png")

The subpackages are layers, each importing only the ones below it: base < image, nn, entropy,
format < core < modeltools, measure < training < cli, pillow, dataset (the import-linter contract in
setup.cfg, run by ``make test``).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {
    "encode_image": "cca_codec.core.codec",
    "decode_image": "cca_codec.core.codec",
    "load_model": "cca_codec.core.checkpoint",
    "LoadedModel": "cca_codec.core.checkpoint",
    "Target": "cca_codec.core.ratecontrol",
    "RateResult": "cca_codec.core.ratecontrol",
    "encode_to_target": "cca_codec.core.ratecontrol",
    "load_image": "cca_codec.image.io",
    "save_image": "cca_codec.image.io",
    "SourceImage": "cca_codec.image.io",
    "DecodedImage": "cca_codec.image.io",
}
"""Public name -> the module that defines it (imported when the name is first used)."""

__all__ = ["__version__", *_API]

if TYPE_CHECKING:  # the names for type checkers and editors; at run time __getattr__ imports them
    from cca_codec.core.checkpoint import LoadedModel, load_model  # noqa: F401
    from cca_codec.core.codec import decode_image, encode_image  # noqa: F401
    from cca_codec.core.ratecontrol import RateResult, Target, encode_to_target  # noqa: F401
    from cca_codec.image.io import DecodedImage, SourceImage, load_image, save_image  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later uses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
