"""Model directories: `models/<id>/` with `model.json`, `weights.safetensors` and `MODEL_CARD.md`.

model.json holds the network configuration, the quality table (beta, distortion weight and the
equivalent lambda per quality), the default quality and the sha256 of the weights file. The
weights file holds every parameter (float16 or float32) and the frozen entropy-coding buffers:
the z prior's and the Gaussian tables' integer CDFs (int32) and the scale bounds (float64).

A model may instead have one network per quality (the official CCA checkpoints are one network
per lambda): then model.json has format_version 2, each quality entry names its own weights file
and sha256 (`"weights": "q6.safetensors", "weights_sha256": ...`) and there is no top-level
weights file. Each such network has a single gain row of zeros (gain 1), so only the listed
integer qualities can be coded. Version 1 directories (one network for all qualities through
per-quality gains) are read and written as before.

A directory whose weights are updated (every stint of the background run) keeps a record of the
weights it had before, `weights_history.json`, so that a file made with earlier weights is
refused with a message that says which ones they were.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from cca_codec.base.errors import InputError, ModelError, UsageError, one_line
from cca_codec.base.fileio import atomic_write
from cca_codec.nn.blocks import weights_loaded_later
from cca_codec.nn.config import ModelConfig, get_config
from cca_codec.nn.model import CCAModel
from cca_codec.nn.quality import DEFAULT_QUALITIES, QualityPoint, quality_table_from_dicts

DEFAULT_MODEL_ID = "cca-compact"
MODEL_FORMAT = "ccacodec-model"
MODEL_FORMAT_VERSION = 1
PER_QUALITY_FORMAT_VERSION = 2  # quality entries name their own weights files
WEIGHTS_FILE = "weights.safetensors"
QUALITY_WEIGHTS_FILE = "q{quality}.safetensors"
WEIGHTS_HISTORY_FILE = "weights_history.json"
WEIGHTS_HISTORY_FORMAT = "ccacodec-weights-history"
PER_QUALITY_GAIN_ROWS = 1  # a per-quality network's gains: one row of zeros, evaluated at quality 1
DEFAULT_QUALITY = 4.0
_EXACT_BUFFERS = ("scale_bounds",)  # kept in float64 whatever the weight dtype


@dataclass
class QualityWeights:
    """The weights file of one quality of a model with per-quality weights, and its network
    once read (on first use)."""

    path: Path
    sha256: bytes
    net: CCAModel | None = None


@dataclass(frozen=True)
class QualityNetwork:
    """What codes at one quality: the network, the quality its gains are evaluated at, and the
    sha256 of its weights (recorded in `.cca` headers)."""

    net: CCAModel
    gain_quality: float
    weights_sha256: bytes


@dataclass
class LoadedModel:
    """A network ready for coding, with what a `.cca` header records about it.

    With per-quality weights (`per_quality` not empty: integer quality -> its weights), `net`
    and `weights_sha256` are those of the default quality; `at_quality` gives any quality's.
    """

    model_id: str
    net: CCAModel
    qualities: tuple[QualityPoint, ...]
    weights_sha256: bytes
    default_quality: float = DEFAULT_QUALITY
    directory: Path | None = None
    info: dict = field(default_factory=dict)
    per_quality: dict[int, QualityWeights] = field(default_factory=dict)

    @property
    def config(self) -> ModelConfig:
        return self.net.cfg

    def quality_point(self, quality: float) -> QualityPoint:
        """The operating point at or nearest below `quality` (the lowest one below the table)."""
        below = [p for p in self.qualities if p.quality <= quality]
        return below[-1] if below else self.qualities[0]

    def lam(self, quality: float) -> float:
        """Lambda at a possibly fractional quality, interpolated geometrically."""
        lo = self.quality_point(quality)
        above = [p for p in self.qualities if p.quality > lo.quality]
        if not above:
            return lo.lam
        hi = above[0]
        t = min(max((quality - lo.quality) / (hi.quality - lo.quality), 0.0), 1.0)
        return float(lo.lam ** (1 - t) * hi.lam**t)

    def check_quality(self, quality: float) -> float:
        """`quality` as a float if this model can code at it (UsageError otherwise): any value in
        1..N for one network with gains, one of the listed integers for per-quality weights."""
        q = float(quality)
        if self.per_quality:
            if not (q.is_integer() and int(q) in self.per_quality):
                listed = ", ".join(str(n) for n in sorted(self.per_quality))
                raise UsageError(
                    f"model {self.model_id!r} has one network per quality and codes at qualities "
                    f"{listed} only (no fractional qualities), got {quality:g}"
                )
        elif not 1.0 <= q <= len(self.qualities):
            raise UsageError(f"quality must be between 1 and {len(self.qualities)}, got {quality}")
        return q

    def weights_sha256_at(self, quality: float) -> bytes | None:
        """sha256 of the weights that code at `quality`, None where a per-quality model has no
        network (the one network's at any quality otherwise); loads nothing."""
        if not self.per_quality:
            return self.weights_sha256
        q = float(quality)
        entry = self.per_quality.get(int(q)) if q.is_integer() else None
        return None if entry is None else entry.sha256

    def at_quality(self, quality: float) -> QualityNetwork:
        """The network that codes at `quality` (checked with `check_quality`), read on first use."""
        q = self.check_quality(quality)
        if not self.per_quality:
            return QualityNetwork(self.net, q, self.weights_sha256)
        entry = self.per_quality[int(q)]
        if entry.net is None:
            entry.net = _read_network(entry.path, entry.sha256, self.config, PER_QUALITY_GAIN_ROWS, self.model_id, self.net.trainable)
        return QualityNetwork(entry.net, float(PER_QUALITY_GAIN_ROWS), entry.sha256)


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
    atomic_write(out / WEIGHTS_FILE, weights)
    _write_meta(
        out, model.model_id, model.config, [q.to_dict() for q in model.qualities], model.default_quality, dtype,
        info if info is not None else model.info, card, version=MODEL_FORMAT_VERSION,
        weights={"weights": WEIGHTS_FILE, "weights_sha256": hashlib.sha256(weights).hexdigest()},
    )
    return out


def export_weights(
    cfg: ModelConfig, qualities: tuple[QualityPoint, ...], weights: dict[str, torch.Tensor], directory: str | os.PathLike, model_id: str, info: dict
) -> Path:
    """Freeze the integer tables of a network with these weights and write it as a model
    directory (float16 weights): a training run's export, and the models `widen` and `extend` make."""
    net = CCAModel(cfg, num_qualities=len(qualities))
    net.load_state_dict({k: v.detach().cpu().contiguous() for k, v in weights.items()}, strict=False)
    net.eval()
    prepare_tables(net)
    model = LoadedModel(model_id, net, qualities, b"", info=info)
    return save_model_dir(model, directory, dtype=torch.float16, info=info, card=model_card(model_id, net, info))


def model_card(model_id: str, net: CCAModel, info: dict) -> str:
    """MODEL_CARD.md of a trained network: its configuration and size, and the run behind it (`info`)."""
    cfg = net.cfg
    return (
        f"# {model_id}\n\n"
        f"CCA-loss learned image codec network (Han et al., NeurIPS 2024 design), configuration `{cfg.name}`: "
        f"{net.inference_parameter_count():,} inference parameters, M={cfg.latent_channels}, slices {cfg.slice_sizes}, "
        f"checkerboard spatial context: {cfg.spatial_context}.\n\n"
        f"Training (this run): {info.get('steps', '?')} steps, {info.get('minutes', 0):.1f} wall minutes on {info.get('device', '?')}, "
        f"CCA variant {info.get('variant', '?')}. See TRAINING.md for data, curves and rate-distortion.\n"
    )


def save_per_quality_model_dir(
    model_id: str,
    networks: Iterable[tuple[QualityPoint, CCAModel]],
    directory: str | os.PathLike,
    *,
    default_quality: float,
    dtype: torch.dtype = torch.float32,
    card: str = "",
    info: dict | None = None,
) -> Path:
    """Write a model directory with one network per quality (format version 2) into `directory`
    (created). Each network (with PER_QUALITY_GAIN_ROWS gain rows and frozen tables) is written
    to `q<quality>.safetensors` as `networks` yields it, so they can be built one at a time;
    model.json comes last. All networks must share one configuration, their qualities must
    be distinct, and `default_quality` must be one of them (ValueError otherwise)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    entries: list[dict] = []
    cfg: ModelConfig | None = None
    for point, net in networks:
        if cfg is not None and net.cfg != cfg:
            raise ValueError(f"quality {point.quality}: configuration {net.cfg.name!r} differs from {cfg.name!r}")
        cfg = net.cfg
        name = QUALITY_WEIGHTS_FILE.format(quality=point.quality)
        weights = serialize_weights(net, dtype)
        atomic_write(out / name, weights)
        entries.append({**point.to_dict(), "weights": name, "weights_sha256": hashlib.sha256(weights).hexdigest()})
    numbers = [e["quality"] for e in entries]
    if cfg is None or len(set(numbers)) != len(numbers) or default_quality not in numbers:
        raise ValueError(f"need distinct qualities including the default {default_quality:g}, got {numbers}")
    entries.sort(key=lambda e: e["quality"])
    _write_meta(
        out, model_id, cfg, entries, default_quality, dtype, info or {}, card, version=PER_QUALITY_FORMAT_VERSION, weights={}
    )
    return out


def _write_meta(
    out: Path,
    model_id: str,
    cfg: ModelConfig,
    qualities: list[dict],
    default_quality: float,
    dtype: torch.dtype,
    info: dict,
    card: str,
    *,
    version: int,
    weights: dict,
) -> None:
    """Write model.json (with the top-level `weights` fields given) and the model card."""
    meta = {
        "format": MODEL_FORMAT,
        "format_version": version,
        "model_id": model_id,
        "config": cfg.to_dict(),
        "qualities": qualities,
        "default_quality": default_quality,
        **weights,
        "weights_dtype": str(dtype).removeprefix("torch."),
        "info": info,
    }
    atomic_write(out / "model.json", (json.dumps(meta, indent=2) + "\n").encode())
    atomic_write(out / "MODEL_CARD.md", (card or f"# {model_id}\n").encode())


def training_totals(info: dict) -> tuple[int, float]:
    """(steps, machine CPU minutes) of the whole training behind a model, from its model.json
    "info": the totals a stint export records, else the single run's own figures."""
    return int(info.get("total_steps", info.get("steps", 0))), float(info.get("total_cpu_minutes", info.get("minutes", 0.0)))


def earlier_weights(directory: Path) -> dict[str, dict]:
    """The weights a model directory held before its current ones, by sha256 (hex): each entry
    has `total_steps`, `total_cpu_minutes` and `replaced` (the date new weights took their place),
    from `weights_history.json`; empty when the directory keeps no history (or an unreadable one:
    the history only ever improves a message)."""
    try:
        record = json.loads((Path(directory) / WEIGHTS_HISTORY_FILE).read_text())
        return {entry["weights_sha256"]: entry for entry in record["weights"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def record_replaced_weights(directory: Path, replaced: str) -> None:
    """Before new weights replace a model directory's (single-network) weights: append the current
    ones (sha256 and training totals from model.json) to its `weights_history.json`, dated `replaced`."""
    directory = Path(directory)
    meta = json.loads((directory / "model.json").read_text())
    steps, cpu_minutes = training_totals(meta.get("info", {}))
    path = directory / WEIGHTS_HISTORY_FILE
    record = json.loads(path.read_text()) if path.exists() else {"format": WEIGHTS_HISTORY_FORMAT, "model_id": meta["model_id"], "weights": []}
    if any(e["weights_sha256"] == meta["weights_sha256"] for e in record["weights"]):
        return
    record["weights"].append({
        "weights_sha256": meta["weights_sha256"], "replaced": replaced, "total_steps": steps, "total_cpu_minutes": cpu_minutes,
    })
    atomic_write(path, (json.dumps(record, indent=2) + "\n").encode())


def model_search_path() -> list[Path]:
    """Where model ids are looked up, in order: $CCACODEC_MODELS (os.pathsep-separated), the
    source checkout's `models/`, and the installed `share/ccacodec/models`."""
    paths = [Path(p) for p in os.environ.get("CCACODEC_MODELS", "").split(os.pathsep) if p]
    paths.append(Path(__file__).resolve().parents[2] / "models")
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


def describe_model_dir(model_id: str, directory: Path) -> dict:
    """What ``ccacodec models`` shows of one model directory, read from its model.json only (no
    weights): id, directory, config name, weights dtype, default quality and the qualities with
    their lambdas; or, where model.json cannot be read, ``error``."""
    entry: dict[str, Any] = {"id": model_id, "directory": str(directory)}
    try:
        meta = json.loads((directory / "model.json").read_text())
        entry.update(
            config=meta["config"]["name"],
            weights_dtype=meta.get("weights_dtype", "?"),
            default_quality=meta.get("default_quality"),
            qualities=[{"quality": q["quality"], "lambda": q["lambda"]} for q in meta["qualities"]],
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        entry["error"] = one_line(f"{type(exc).__name__}: {exc}")
    return entry


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


def writable_model_root() -> Path:
    """The first entry of the model search path that exists as a writable directory or can be
    created (InputError, an unwritable output, when there is none)."""
    for root in model_search_path():
        existing = next(p for p in (root, *root.parents) if p.exists())
        if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
            return root
    searched = ", ".join(str(p) for p in model_search_path())
    raise InputError(f"no writable model directory on the search path ({searched}); set CCACODEC_MODELS")


def load_model(model: str | os.PathLike | None = None, *, trainable: bool = False) -> LoadedModel:
    """Load a model directory (by id or path), verifying its weights hash and shapes.

    The network codes with its frozen tables and CompressAI is not imported; `trainable` gives
    it CompressAI's entropy models instead, for training from these weights.

    Per-quality weights (format version 2): the default quality's network is read now, the
    others on first use (LoadedModel.at_quality), each checked against its sha256 then.
    """
    directory = resolve_model_dir(model)
    try:
        meta = json.loads((directory / "model.json").read_text())
        version = meta.get("format_version")
        if meta.get("format") != MODEL_FORMAT or version not in (MODEL_FORMAT_VERSION, PER_QUALITY_FORMAT_VERSION):
            raise ModelError(f"{directory}/model.json is not a ccacodec model of a supported version")
        model_id = str(meta["model_id"])
        cfg = ModelConfig.from_dict(meta["config"])
        qualities = quality_table_from_dicts(meta["qualities"])
        default_quality = float(meta.get("default_quality", DEFAULT_QUALITY))
        if version == PER_QUALITY_FORMAT_VERSION:
            per_quality = _per_quality_weights(directory, meta["qualities"])
            if default_quality not in per_quality:
                raise ModelError(f"{directory}/model.json: default quality {default_quality:g} has no weights")
            path, sha256 = per_quality[int(default_quality)].path, per_quality[int(default_quality)].sha256
        else:
            per_quality = {}
            path, sha256 = _weights_path(directory, meta.get("weights", WEIGHTS_FILE)), bytes.fromhex(meta["weights_sha256"])
    except ModelError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot read model in {directory}: {exc}") from None
    net = _read_network(path, sha256, cfg, PER_QUALITY_GAIN_ROWS if per_quality else len(qualities), model_id, trainable)
    if per_quality:
        per_quality[int(default_quality)].net = net
    return LoadedModel(
        model_id=model_id,
        net=net,
        qualities=qualities,
        weights_sha256=sha256,
        default_quality=default_quality,
        directory=directory,
        info=meta.get("info", {}),
        per_quality=per_quality,
    )


def _per_quality_weights(directory: Path, entries: list[dict]) -> dict[int, QualityWeights]:
    """Integer quality -> its weights file and sha256, from model.json's quality entries."""
    weights = {}
    for e in entries:
        if not float(e["quality"]).is_integer() or int(e["quality"]) in weights:
            raise ModelError(f"{directory}/model.json: quality {e['quality']!r} is not a distinct integer")
        weights[int(e["quality"])] = QualityWeights(_weights_path(directory, e["weights"]), bytes.fromhex(e["weights_sha256"]))
    return weights


def _weights_path(directory: Path, name: str) -> Path:
    """A weights file named in model.json: a plain file name inside the model directory."""
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise ModelError(f"{directory}/model.json names weights file {name!r}, not a file name in the directory")
    return directory / name


def _read_network(path: Path, sha256: bytes, cfg: ModelConfig, num_qualities: int, model_id: str, trainable: bool) -> CCAModel:
    """Read a weights file into a new network (eval mode), checking its sha256 and shapes;
    `trainable`: with CompressAI's entropy models (CCAModel)."""
    try:
        weights = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model {model_id!r} weights {path}: {exc.strerror or exc}") from None
    if hashlib.sha256(weights).digest() != sha256:
        raise ModelError(f"weights of model {model_id!r} in {path.parent} do not match their sha256 ({path.name})")
    with weights_loaded_later():  # every parameter is loaded next, strictly
        net = CCAModel(cfg, num_qualities=num_qualities, trainable=trainable)
    try:
        state = {
            k: (v if not v.is_floating_point() or k.endswith(_EXACT_BUFFERS) else v.float())
            for k, v in load_safetensors(weights).items()
        }
        net.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"weights {path} do not fit configuration {cfg.name!r}: {first}") from None
    return net.eval()
