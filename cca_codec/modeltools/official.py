"""Import the CCA authors' published checkpoints (LabShuHangGU/CCA) as ccacodec models.

The official `LICAutoencoder` is our `CCAModel` without the checkerboard spatial context, layer
for layer (tests/test_official.py reproduces the official outputs); only parameter names differ,
as `RENAME_RULES` says. The authors publish one network per lambda, so an import writes a model
directory with per-quality weights (model.json format version 2), one network per lambda, each
with gain 1.

The official "lambda" values (0.3, 0.85, 1.8, 3.5) are the rate weights beta of the paper's loss,
so they take the paper's quality numbers of `nn.quality.DEFAULT_QUALITIES`: 3.5 -> 3, 1.8 -> 4,
0.85 -> 5, 0.3 -> 6 (higher quality, lower beta).

Checkpoints are read with `torch.load(weights_only=True)`: tensors and plain containers only,
never arbitrary pickled objects.
"""
from __future__ import annotations

import hashlib
import math
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cca_codec.base.errors import InputError, ModelError, UsageError
from cca_codec.core.checkpoint import (
    DEFAULT_QUALITY,
    PER_QUALITY_GAIN_ROWS,
    prepare_tables,
    save_per_quality_model_dir,
    writable_model_root,
)
from cca_codec.nn.config import ModelConfig, get_config
from cca_codec.nn.model import CCAModel
from cca_codec.nn.quality import DEFAULT_QUALITIES, QualityPoint

OFFICIAL_REPOSITORY = "LabShuHangGU/CCA"
OFFICIAL_URL = f"https://github.com/{OFFICIAL_REPOSITORY}"
DEFAULT_OFFICIAL_MODEL_ID = "cca-official"
OFFICIAL_SLICE_POWER = 1.7
MAX_LISTED = 10  # keys named per kind of mismatch in an error message

RENAME_RULES: tuple[tuple[str, str], ...] = (
    ("mean_NAF_transforms.", "context.mean_stacks."),
    ("scale_NAF_transforms.", "context.scale_stacks."),
    ("mean_cc_transforms.", "context.mean_heads."),
    ("scale_cc_transforms.", "context.scale_heads."),
    ("lrp_transforms.", "context.lrp."),
    ("z_entropy_bottleneck.", "entropy_bottleneck."),
    (".FFN.", ".ffn."),
)
"""(official, ours) name fragments, applied in order. A fragment starting with "." is replaced
wherever it occurs (inside NAF-blocks); the others are key prefixes. Keys of g_a, g_s, h_a,
h_mean_s and h_scale_s keep their names."""

DDP_PREFIX = "module."
# CompressAI buffers rebuilt rather than imported: the CDF tables (checkpoint.prepare_tables) and
# the constants the EntropyBottleneck constructor sets (tail-mass target, likelihood lower bound).
_REBUILT_BUFFERS = r"(_quantized_cdf|_offset|_cdf_length|target|likelihood_lower_bound\.bound)$"
IGNORED_OFFICIAL_KEYS = re.compile(
    rf"^(aux_entropymodel\.|gaussian_conditional\.)|^z_entropy_bottleneck\.{_REBUILT_BUFFERS}"
)
"""Official keys dropped on reading: the auxiliary entropy model (training only), CompressAI's
Gaussian conditional (its scale table is ours) and the z prior's rebuilt buffers."""
_OURS_ONLY = re.compile(rf"^(gains\.|scale_bounds$|gaussian_conditional\.)|^entropy_bottleneck\.{_REBUILT_BUFFERS}")
"""Our keys that no official key feeds: gains (left at zero, gain 1), the scale table, the
Gaussian conditional and the z prior's rebuilt buffers."""

_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_HASH_CHUNK = 1 << 20
_UNPICKLER_MARKER = "WeightsUnpickler error:"  # where torch.load's weights-only refusals say what they met

# The paper's six operating points share distortion weight 0.05; qualities 7 and 8 are ours.
PAPER_QUALITIES: tuple[QualityPoint, ...] = tuple(
    p for p in DEFAULT_QUALITIES if p.distortion_weight == DEFAULT_QUALITIES[0].distortion_weight
)


def official_key_to_ours(key: str) -> str:
    """Our name of an official state-dict key (without `module.` prefix)."""
    return _rename(key, forward=True)


def our_key_to_official(key: str) -> str:
    """The official name of one of our state-dict keys (inverse of `official_key_to_ours`)."""
    return _rename(key, forward=False)


def _rename(key: str, forward: bool) -> str:
    """Apply RENAME_RULES official -> ours (`forward`) or ours -> official."""
    for official, ours in RENAME_RULES:
        old, new = (official, ours) if forward else (ours, official)
        if old.startswith("."):
            key = key.replace(old, new)
        elif key.startswith(old):
            key = new + key[len(old) :]
    return key


def clean_official_state_dict(state: Mapping[Any, Any], source: str = "checkpoint") -> dict[str, Tensor]:
    """Strip the DDP `module.` prefix and drop `IGNORED_OFFICIAL_KEYS`; ModelError when an entry
    is not a tensor under a string key."""
    cleaned: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise ModelError(f"{source}: entry {key!r} is not a named tensor; not an official CCA state dict")
        name = key.removeprefix(DDP_PREFIX)
        if not IGNORED_OFFICIAL_KEYS.search(name):
            cleaned[name] = value
    return cleaned


def read_official_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The cleaned official state dict in `path`: a raw state dict or a dict with "state_dict"
    (the published `.pth.tar` files), loaded on the CPU with weights_only=True.

    Raises:
        InputError: the file is missing or unreadable.
        ModelError: it is not a PyTorch checkpoint holding a state dict.
    """
    path = _existing_file(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on foreign or damaged files
        raise ModelError(
            f"{path} does not load as a PyTorch checkpoint of tensors ({_load_failure(exc)}); "
            "if it is a trusted checkpoint that also holds other objects, save its state_dict alone and import that"
        ) from None
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not state:
        raise ModelError(f"{path} holds no state dict (a dict of tensors, or a dict with 'state_dict')")
    return clean_official_state_dict(state, str(path))


def _load_failure(exc: Exception) -> str:
    """The telling part of a torch.load error: the weights-only unpickler's complaint if any,
    else the message's first sentence."""
    text = str(exc).split(_UNPICKLER_MARKER, 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0].split('. ')[0] if lines else 'no details'}"


def _existing_file(path: str | Path) -> Path:
    """`path` as a Path, InputError unless it is an existing file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    return path


def _shape(state_dict: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    try:
        return tuple(state_dict[key].shape)
    except KeyError:
        raise ModelError(f"not an official CCA state dict: key {key!r} is missing") from None


def _count(state_dict: Mapping[str, Tensor], pattern: str) -> int:
    """Number of distinct indices `(\\d+)` in the keys that fully match the regex `pattern`."""
    return len({m.group(1) for key in state_dict if (m := re.fullmatch(pattern, key))})


def official_config(state_dict: Mapping[str, Tensor], name: str = DEFAULT_OFFICIAL_MODEL_ID) -> ModelConfig:
    """The ModelConfig of a cleaned official state dict, inferred from its shapes: M, ae_dim,
    NAF-blocks per stage, em_dim and em_layers, the head widths, z channels and slice count.
    Named `cca-paper` when it is the paper's network.

    Raises:
        ModelError: a key it needs is missing, or the slices are not the k=1.7 proportions.
    """
    dims = [_shape(state_dict, f"g_a.down.{i}.weight")[0] for i in range(4)]
    blocks = [_count(state_dict, rf"g_a\.blocks\.{i}\.(\d+)\.norm1\.weight") for i in range(3)]
    num_slices = _count(state_dict, r"mean_cc_transforms\.(\d+)\.4\.weight")
    cfg = ModelConfig(
        name=name,
        ae_dims=(dims[0], dims[1], dims[2]),
        ae_blocks=(blocks[0], blocks[1], blocks[2]),
        latent_channels=dims[3],
        hyper_channels=_shape(state_dict, "h_a.4.weight")[0],
        num_slices=num_slices,
        slice_power=OFFICIAL_SLICE_POWER,
        stack_width=_shape(state_dict, "mean_NAF_transforms.0.in_conv.weight")[0],
        stack_depth=_count(state_dict, r"mean_NAF_transforms\.0\.blocks\.(\d+)\.norm1\.weight"),
        head_widths=(_shape(state_dict, "mean_cc_transforms.0.0.weight")[0], _shape(state_dict, "mean_cc_transforms.0.2.weight")[0]),
        spatial_context=False,
    )
    sizes = [_shape(state_dict, f"mean_cc_transforms.{i}.4.weight")[0] for i in range(num_slices)]
    if sizes != cfg.slice_sizes:
        raise ModelError(
            f"official checkpoint slices {sizes} are not the k={OFFICIAL_SLICE_POWER} proportions of "
            f"M={cfg.latent_channels} ({cfg.slice_sizes}); only the published slicing is supported"
        )
    paper = get_config("cca-paper")
    return paper if replace(cfg, name=paper.name) == paper else cfg


def _listing(label: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    more = f", ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return f"{len(keys)} {label} ({shown}{more})"


def map_official_state_dict(state_dict: Mapping[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Rename a cleaned official state dict to our keys (float32 tensors), checked against
    CCAModel(cfg): every expected key present with its shape, nothing left over.

    Raises:
        ModelError: listing the missing, unexpected and wrong-shape keys (official names, at
            most MAX_LISTED of each, with counts). Nothing is ever loaded partially.
    """
    with torch.device("meta"):
        expected = {
            k: tuple(v.shape)
            for k, v in CCAModel(cfg, num_qualities=PER_QUALITY_GAIN_ROWS).state_dict().items()
            if not _OURS_ONLY.search(k)
        }
    mapped: dict[str, Tensor] = {}
    unexpected: list[str] = []
    wrong: list[str] = []
    for key, tensor in state_dict.items():
        ours = official_key_to_ours(key)
        if ours not in expected:
            unexpected.append(key)
        elif tuple(tensor.shape) != expected[ours] or not tensor.is_floating_point():
            wrong.append(f"{key} {str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}, expected {list(expected[ours])}")
        else:
            mapped[ours] = tensor.to(torch.float32)
    missing = [our_key_to_official(k) for k in expected if k not in mapped and our_key_to_official(k) not in state_dict]
    if missing or unexpected or wrong:
        problems = [_listing(label, keys) for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise ModelError(f"official checkpoint does not fit configuration {cfg.name!r}: {'; '.join(problems)}")
    return mapped


def load_official_network(state_dict: Mapping[str, Tensor], cfg: ModelConfig | None = None) -> CCAModel:
    """CCAModel (eval mode, one gain row at zero) holding a cleaned official state dict; its CDF
    tables are not built yet (checkpoint.prepare_tables). `cfg` defaults to `official_config`."""
    cfg = cfg or official_config(state_dict)
    mapped = map_official_state_dict(state_dict, cfg)
    net = CCAModel(cfg, num_qualities=PER_QUALITY_GAIN_ROWS)
    net.load_state_dict({**net.state_dict(), **mapped})
    return net.eval()


def official_quality(lam: float) -> QualityPoint:
    """The paper's operating point of an official lambda (our beta): 3.5 -> quality 3, 1.8 -> 4,
    0.85 -> 5, 0.3 -> 6 (UsageError for a value that is not one of the paper's)."""
    for point in PAPER_QUALITIES:
        if math.isclose(point.beta, lam, rel_tol=1e-9):
            return point
    known = ", ".join(f"{p.beta:g}" for p in PAPER_QUALITIES)
    raise UsageError(f"lambda {lam:g} is not one of the paper's operating points ({known})")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def _model_card(model_id: str, sources: list[dict]) -> str:
    rows = "\n".join(f"| {s['quality']} | {s['lambda']:g} | `{s['file']}` | `{s['sha256'][:16]}` |" for s in sources)
    return (
        f"# {model_id}\n\n"
        f"The CCA authors' published weights ({OFFICIAL_URL}; Han et al., *Causal Context Adjustment Loss "
        f"for Learned Image Compression*, NeurIPS 2024), imported with `ccacodec import-official`: one network "
        f"per lambda, each coding at one quality, grouped context only (no checkerboard).\n\n"
        f"| quality | official lambda | checkpoint | sha256 (first 16) |\n|---|---|---|---|\n{rows}\n\n"
        f"Licence: these weights are the CCA authors' work, not ccacodec's, and ccacodec's licence does not "
        f"cover them. Check the terms of {OFFICIAL_REPOSITORY} before redistributing them or this directory.\n"
    )


def _networks(sources: list[tuple[Path, QualityPoint]]) -> Iterator[tuple[QualityPoint, CCAModel]]:
    """Read, check and convert each checkpoint in turn (one network in memory at a time)."""
    first: tuple[Path, ModelConfig] | None = None
    for path, point in sources:
        state = read_official_checkpoint(path)
        cfg = official_config(state)
        if first is not None and cfg != first[1]:
            theirs = first[1].to_dict()
            differ = ", ".join(f"{k} {v} vs {theirs[k]}" for k, v in cfg.to_dict().items() if v != theirs[k])
            raise ModelError(f"{path} is not the same network as {first[0]} ({differ}); import them as separate models")
        first = first or (path, cfg)
        net = load_official_network(state, cfg)
        prepare_tables(net)
        yield point, net


def import_official(
    paths_with_lambdas: list[tuple[Path, float]],
    model_id: str = DEFAULT_OFFICIAL_MODEL_ID,
    out_dir: str | Path | None = None,
) -> Path:
    """Write the official checkpoints (each with its official lambda) as the model directory
    `out_dir/model_id` (default out_dir: `checkpoint.writable_model_root()`), float32 weights,
    one network per quality; the default quality is the one nearest 4. Returns the directory.
    Nothing is left behind on failure.

    Raises:
        UsageError: no checkpoints, a bad model id, or lambdas that are unknown or repeated.
        InputError: a checkpoint file is missing or unreadable, or the directory exists or
            cannot be created.
        ModelError: a checkpoint is not an official CCA network, or they differ in configuration.
    """
    if not paths_with_lambdas:
        raise UsageError("no official checkpoints given")
    if not _MODEL_ID.fullmatch(model_id):
        raise UsageError(f"model id {model_id!r} must be 1-255 characters of [A-Za-z0-9._-], not starting with . _ or -")
    points = [official_quality(lam) for _, lam in paths_with_lambdas]
    if len({p.quality for p in points}) != len(points):
        raise UsageError(f"each lambda may be given once, got {', '.join(f'{lam:g}' for _, lam in paths_with_lambdas)}")
    root = Path(out_dir) if out_dir is not None else writable_model_root()
    target = root / model_id
    if target.exists():
        raise InputError(f"{target} exists; remove it first, or choose another --model-id or --out")
    paths = [_existing_file(p) for p, _ in paths_with_lambdas]
    sources = [
        {"quality": point.quality, "lambda": lam, "file": path.name, "sha256": _file_sha256(path)}
        for path, (_, lam), point in zip(paths, paths_with_lambdas, points)
    ]
    sources.sort(key=lambda s: s["quality"])
    info = {"origin": OFFICIAL_URL, "sources": sources}
    default = min((p.quality for p in points), key=lambda q: (abs(q - DEFAULT_QUALITY), -q))
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = root / f".{model_id}.{secrets.token_hex(4)}.part"
        staging.mkdir()
    except OSError as exc:
        raise InputError(f"cannot create the model directory in {root}: {exc.strerror or exc}") from None
    try:
        save_per_quality_model_dir(
            model_id, _networks(list(zip(paths, points))), staging,
            default_quality=default, dtype=torch.float32, card=_model_card(model_id, sources), info=info,
        )
        staging.rename(target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise InputError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
