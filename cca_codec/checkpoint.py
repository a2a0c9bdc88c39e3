"""Model directories: `models/<id>/` with `model.json`, `weights.safetensors` and `MODEL_CARD.md`.

model.json holds the network configuration, the quality table (beta, distortion weight and the
equivalent lambda per quality), the default quality and the sha256 of the weights file. The
weights file holds every parameter (float16 or float32) and the frozen entropy-coding buffers:
the z prior's and the Gaussian tables' integer CDFs (int32) and the scale bounds (float64).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .errors import ModelError
from .fileio import atomic_write
from .nn.config import ModelConfig, get_config
from .nn.model import CCAModel
from .nn.quality import DEFAULT_QUALITIES, QualityPoint, quality_table_from_dicts

DEFAULT_MODEL_ID = "cca-compact"
MODEL_FORMAT = "ccacodec-model"
MODEL_FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
_EXACT_BUFFERS = ("scale_bounds",)  # kept in float64 whatever the weight dtype


@dataclass
class LoadedModel:
    """A network ready for coding, with what a `.cca` header records about it."""

    model_id: str
    net: CCAModel
    qualities: tuple[QualityPoint, ...]
    weights_sha256: bytes
    default_quality: float = 4.0
    directory: Path | None = None
    info: dict = field(default_factory=dict)

    @property
    def config(self) -> ModelConfig:
        return self.net.cfg

    def quality_point(self, quality: float) -> QualityPoint:
        """The integer operating point nearest below `quality` (for reporting its lambda)."""
        return self.qualities[min(max(int(quality), 1), len(self.qualities)) - 1]

    def lam(self, quality: float) -> float:
        """Lambda at a possibly fractional quality, interpolated geometrically."""
        lo = self.quality_point(quality)
        hi = self.quality_point(min(quality + 1, len(self.qualities)))
        t = min(max(quality - lo.quality, 0.0), 1.0)
        return float(lo.lam ** (1 - t) * hi.lam**t)


def serialize_weights(net: CCAModel, dtype: torch.dtype = torch.float32) -> bytes:
    """safetensors bytes of the state dict; floating parameters cast to `dtype`, integer tables
    and the float64 scale bounds kept exactly."""
    state = {}
    for name, tensor in net.state_dict().items():
        t = tensor.detach().cpu()
        if t.is_floating_point() and not name.endswith(_EXACT_BUFFERS):
            t = t.to(dtype)
        state[name] = t.contiguous()
    return save_safetensors(state)


def prepare_tables(net: CCAModel) -> None:
    """Build (freeze) the integer CDF tables of z and y from the current weights."""
    net.update(scale_table=net.scale_bounds.to(torch.float32), force=True)


def in_memory_model(
    config: ModelConfig | str,
    *,
    seed: int = 0,
    model_id: str | None = None,
    qualities: tuple[QualityPoint, ...] = DEFAULT_QUALITIES,
) -> LoadedModel:
    """A randomly initialised model with frozen tables: for tests and smoke runs only."""
    cfg = get_config(config) if isinstance(config, str) else config
    torch.manual_seed(seed)
    net = CCAModel(cfg, num_qualities=len(qualities)).eval()
    prepare_tables(net)
    digest = hashlib.sha256(serialize_weights(net)).digest()
    return LoadedModel(model_id or cfg.name, net, qualities, digest)


def save_model_dir(
    model: LoadedModel, directory: str | os.PathLike, *, dtype: torch.dtype = torch.float16, card: str = "", info: dict | None = None
) -> Path:
    """Write `model.json`, the weights and a model card into `directory` (created)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    weights = serialize_weights(model.net, dtype)
    meta = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "model_id": model.model_id,
        "config": model.config.to_dict(),
        "qualities": [q.to_dict() for q in model.qualities],
        "default_quality": model.default_quality,
        "weights": WEIGHTS_FILE,
        "weights_dtype": str(dtype).removeprefix("torch."),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "info": info if info is not None else model.info,
    }
    atomic_write(out / WEIGHTS_FILE, weights)
    atomic_write(out / "model.json", (json.dumps(meta, indent=2) + "\n").encode())
    atomic_write(out / "MODEL_CARD.md", (card or f"# {model.model_id}\n").encode())
    return out


def model_search_path() -> list[Path]:
    """Where model ids are looked up, in order: $CCACODEC_MODELS (os.pathsep-separated), the
    source checkout's `models/`, and the installed `share/ccacodec/models`."""
    paths = [Path(p) for p in os.environ.get("CCACODEC_MODELS", "").split(os.pathsep) if p]
    paths.append(Path(__file__).resolve().parent.parent / "models")
    paths.append(Path(sys.prefix) / "share" / "ccacodec" / "models")
    return paths


def available_models() -> dict[str, Path]:
    """Model id -> directory of every model found on the search path (first one wins)."""
    found: dict[str, Path] = {}
    for root in model_search_path():
        if root.is_dir():
            for d in sorted(root.iterdir()):
                if (d / "model.json").is_file():
                    found.setdefault(d.name, d)
    return found


def resolve_model_dir(model: str | os.PathLike | None) -> Path:
    """A model id or a directory path -> the model directory (ModelError when missing)."""
    name = str(model) if model is not None else DEFAULT_MODEL_ID
    as_path = Path(name)
    if (as_path / "model.json").is_file():
        return as_path
    found = available_models().get(name)
    if found is None:
        searched = ", ".join(str(p) for p in model_search_path())
        raise ModelError(
            f"model {name!r} not found (searched {searched}); pass --model DIR or set CCACODEC_MODELS"
        )
    return found


def load_model(model: str | os.PathLike | None = None) -> LoadedModel:
    """Load a model directory (by id or path), verifying its weights hash and shapes."""
    directory = resolve_model_dir(model)
    try:
        meta = json.loads((directory / "model.json").read_text())
        if meta.get("format") != MODEL_FORMAT or meta.get("format_version") != MODEL_FORMAT_VERSION:
            raise ModelError(f"{directory}/model.json is not a ccacodec model of a supported version")
        weights = (directory / meta.get("weights", WEIGHTS_FILE)).read_bytes()
        cfg = ModelConfig.from_dict(meta["config"])
        qualities = quality_table_from_dicts(meta["qualities"])
    except ModelError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot read model in {directory}: {exc}") from None
    digest = hashlib.sha256(weights).digest()
    if digest.hex() != meta.get("weights_sha256"):
        raise ModelError(f"weights of model {meta.get('model_id')!r} in {directory} do not match their sha256")
    net = CCAModel(cfg, num_qualities=len(qualities))
    try:
        state = {
            k: (v if not v.is_floating_point() or k.endswith(_EXACT_BUFFERS) else v.float())
            for k, v in load_safetensors(weights).items()
        }
        net.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"weights in {directory} do not fit configuration {cfg.name!r}: {first}") from None
    return LoadedModel(
        model_id=str(meta["model_id"]),
        net=net.eval(),
        qualities=qualities,
        weights_sha256=digest,
        default_quality=float(meta.get("default_quality", 4)),
        directory=directory,
        info=meta.get("info", {}),
    )
