"""The CCA authors' checkpoints (cca_codec.modeltools.official): name mapping, fidelity, import as a model.

The reference files next to the checkout (`shared/reference`) describe the official format: the
key/shape/dtype table of the paper's network (`official_cca_state_dict.tsv`), the auxiliary
model's keys, and `official_tiny_vector.pt`, a small official-configuration network with an
input and the official code's eval-mode outputs. Tests that need a file skip when it is absent.

Fidelity measure: relative error = max|ours - official| / max|official|, per output tensor.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cca_codec.base.errors import InputError, ModelError, UsageError
from cca_codec.cli import cli
from cca_codec.core.checkpoint import load_model
from cca_codec.core.codec import decode_image, encode_image
from cca_codec.format.container import read_header
from cca_codec.image.io import SourceImage
from cca_codec.modeltools.official import (
    IGNORED_OFFICIAL_KEYS,
    clean_official_state_dict,
    import_official,
    load_official_network,
    map_official_state_dict,
    official_config,
    official_key_to_ours,
    official_quality,
    read_official_checkpoint,
)
from cca_codec.nn.config import ModelConfig, get_config

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
STATE_DICT_TABLE = REFERENCE / "official_cca_state_dict.tsv"
AUX_TABLE = REFERENCE / "official_cca_aux_keys.tsv"
TINY_VECTOR = REFERENCE / "official_tiny_vector.pt"
PAPER_PARAMETERS = 64_988_067
PAPER_KEYS = 1451
FIDELITY_TOLERANCE = 1e-4
TINY_CONFIG = ModelConfig(
    name="cca-official",
    ae_dims=(16, 24, 32),
    ae_blocks=(1, 1, 1),
    latent_channels=40,
    hyper_channels=192,
    stack_width=32,
    stack_depth=1,
    head_widths=(224, 128),
    spatial_context=False,
)

needs_table = pytest.mark.skipif(
    not (STATE_DICT_TABLE.is_file() and AUX_TABLE.is_file()), reason=f"official key tables absent from {REFERENCE}"
)
needs_vector = pytest.mark.skipif(not TINY_VECTOR.is_file(), reason=f"official test vector {TINY_VECTOR} absent")


def read_table(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """key -> (shape, dtype) from a reference .tsv (comment lines start with #)."""
    rows = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape, dtype = line.split("\t")
            rows[key] = (tuple(json.loads(shape)), getattr(torch, dtype))
    return rows


def random_state_dict(table: dict[str, tuple[tuple[int, ...], torch.dtype]], seed: int) -> dict[str, torch.Tensor]:
    """A distinct random tensor of the listed shape and dtype per key."""
    gen = torch.Generator().manual_seed(seed)
    return {
        key: torch.randn(shape, generator=gen).to(dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
        for key, (shape, dtype) in table.items()
    }


def relative_error(ours: torch.Tensor, official: torch.Tensor) -> float:
    return float((ours - official).abs().max() / official.abs().max())


# ------------------------------------------------------------------- the paper network's key table


@pytest.fixture(scope="module")
def paper_import():
    """(official state dict, our cca-paper network loaded from it): a random official state dict
    with the DDP prefix and some auxiliary-model keys, read as an official checkpoint is."""
    official = random_state_dict(read_table(STATE_DICT_TABLE), seed=0)
    aux = random_state_dict(dict(list(read_table(AUX_TABLE).items())[:5]), seed=1)
    raw = {f"module.{k}": v for k, v in {**official, **aux}.items()}
    cleaned = clean_official_state_dict(raw)
    net = load_official_network(cleaned, official_config(cleaned))
    return official, cleaned, net


@needs_table
def test_the_table_is_the_paper_network(paper_import):
    official, cleaned, net = paper_import
    assert len(official) == PAPER_KEYS
    assert official_config(cleaned) == get_config("cca-paper")
    assert net.cfg == get_config("cca-paper")
    assert net.inference_parameter_count() == PAPER_PARAMETERS


@needs_table
def test_reading_drops_the_prefix_aux_model_and_rebuilt_buffers(paper_import):
    official, cleaned, _ = paper_import
    assert not any(k.startswith(("module.", "aux_entropymodel.")) for k in cleaned)
    dropped = set(official) - set(cleaned)
    assert all(k.startswith("gaussian_conditional.") or k.startswith("z_entropy_bottleneck.") for k in dropped)
    assert {k for k in dropped if k.startswith("z_entropy_bottleneck.")} == {
        f"z_entropy_bottleneck.{b}" for b in ("_quantized_cdf", "_offset", "_cdf_length", "target", "likelihood_lower_bound.bound")
    }


@needs_table
def test_every_official_key_lands_in_its_place(paper_import):
    official, _, net = paper_import
    ours = net.state_dict()
    fed = set()
    for key, tensor in official.items():
        if IGNORED_OFFICIAL_KEYS.search(key):
            continue
        name = official_key_to_ours(key)
        assert torch.equal(ours[name], tensor), key
        fed.add(name)
    assert len(fed) == len(official) - 12  # 7 gaussian_conditional + 5 rebuilt z-prior buffers
    left = set(ours) - fed
    assert all(k.startswith(("gains.", "gaussian_conditional.", "entropy_bottleneck.")) or k == "scale_bounds" for k in left)
    assert all(not v.any() for k, v in ours.items() if k.startswith("gains."))  # gain 1


@pytest.mark.parametrize(
    ("official", "ours"),
    [
        ("g_a.down.0.weight", "g_a.down.0.weight"),
        ("g_a.blocks.0.3.FFN.0.weight", "g_a.blocks.0.3.ffn.0.weight"),
        ("g_s.blocks.2.6.conv3.bias", "g_s.blocks.2.6.conv3.bias"),
        ("h_mean_s.4.bias", "h_mean_s.4.bias"),
        ("mean_NAF_transforms.4.blocks.3.FFN.2.weight", "context.mean_stacks.4.blocks.3.ffn.2.weight"),
        ("scale_NAF_transforms.0.in_conv.bias", "context.scale_stacks.0.in_conv.bias"),
        ("mean_cc_transforms.4.4.weight", "context.mean_heads.4.4.weight"),
        ("scale_cc_transforms.2.0.weight", "context.scale_heads.2.0.weight"),
        ("lrp_transforms.1.2.bias", "context.lrp.1.2.bias"),
        ("z_entropy_bottleneck.quantiles", "entropy_bottleneck.quantiles"),
    ],
)
def test_rename_rules(official, ours):
    assert official_key_to_ours(official) == ours


@needs_table
def test_a_missing_key_is_named(paper_import):
    _, cleaned, net = paper_import
    gone = "scale_NAF_transforms.2.blocks.1.sca.1.weight"
    with pytest.raises(ModelError, match=rf"1 missing \({gone}\)"):
        map_official_state_dict({k: v for k, v in cleaned.items() if k != gone}, net.cfg)


@needs_table
def test_a_wrong_shape_is_named(paper_import):
    _, cleaned, net = paper_import
    key = "lrp_transforms.3.0.weight"
    with pytest.raises(ModelError, match=rf"1 wrong shape \({key} float32 \[224, 1, 3, 3\], expected \[224, "):
        map_official_state_dict({**cleaned, key: torch.zeros(224, 1, 3, 3)}, net.cfg)


@needs_table
def test_an_unexpected_key_is_named(paper_import):
    _, cleaned, net = paper_import
    with pytest.raises(ModelError, match=r"1 unexpected \(lrp_transforms\.5\.0\.weight\)"):
        map_official_state_dict({**cleaned, "lrp_transforms.5.0.weight": torch.zeros(1)}, net.cfg)


@needs_table
def test_many_problems_are_counted_and_a_few_listed(paper_import):
    _, cleaned, net = paper_import
    kept = dict(list(cleaned.items())[25:])
    with pytest.raises(ModelError, match=r"25 missing \(.*, \.\.\. and 15 more\)$"):
        map_official_state_dict(kept, net.cfg)


@needs_table
def test_slices_other_than_the_published_ones_are_refused(paper_import):
    _, cleaned, _ = paper_import
    odd = {**cleaned, "mean_cc_transforms.0.4.weight": torch.zeros(9, 128, 3, 3)}
    with pytest.raises(ModelError, match=r"slices \[9, 28, 56, 92, 136\] are not the k=1\.7 proportions"):
        official_config(odd)


# --------------------------------------------------------------------------- reading checkpoints


@needs_vector
def test_raw_and_wrapped_checkpoints_read_the_same(tmp_path):
    wrapped = read_official_checkpoint(TINY_VECTOR)
    raw_path = tmp_path / "raw.pth.tar"
    torch.save({f"module.{k}": v for k, v in torch.load(TINY_VECTOR, weights_only=True)["state_dict"].items()}, raw_path)
    raw = read_official_checkpoint(raw_path)
    assert raw.keys() == wrapped.keys()
    assert all(torch.equal(raw[k], wrapped[k]) for k in raw)


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_official_checkpoint(tmp_path / "absent.pth.tar")
    garbage = tmp_path / "garbage.pth.tar"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="does not load as a PyTorch checkpoint"):
        read_official_checkpoint(garbage)
    empty = tmp_path / "empty.pth.tar"
    torch.save({"epoch": torch.tensor(3), "state_dict": {}}, empty)
    with pytest.raises(ModelError, match="holds no state dict"):
        read_official_checkpoint(empty)


# ------------------------------------------------------------------------------------ fidelity


@pytest.fixture(scope="module")
def vector() -> dict:
    return torch.load(TINY_VECTOR, weights_only=True)


@pytest.fixture(scope="module")
def official_outputs(vector) -> dict[str, torch.Tensor]:
    """Our network's outputs for the vector's input, its weights loaded through the import path."""
    state = read_official_checkpoint(TINY_VECTOR)
    net = load_official_network(state, official_config(state))
    with torch.no_grad():
        out = net(vector["tensors"]["x"], torch.tensor([1.0]))
        z = net.h_a(out["y"])
    return {
        "y": out["y"],
        "z": z,
        "x_hat": out["x_hat"],
        "likelihoods_y": out["likelihoods"]["y"],
        "likelihoods_z": out["likelihoods"]["z"],
    }


@needs_vector
def test_the_vector_config_is_inferred(vector):
    c = vector["config"]
    cfg = official_config(read_official_checkpoint(TINY_VECTOR))
    assert cfg == TINY_CONFIG
    assert (cfg.latent_channels, list(cfg.ae_dims), cfg.stack_width) == (c["M"], c["ae_dim"], c["em_dim"])
    assert (list(cfg.ae_blocks), cfg.stack_depth, list(cfg.head_widths)) == (c["ae_layers"], c["em_layers"], c["cc_widths"])
    assert (cfg.hyper_channels, cfg.slice_power, cfg.slice_sizes) == (c["z_channels"], c["prop_k"], [1, 3, 7, 11, 18])


@needs_vector
@pytest.mark.parametrize("name", ["y", "z", "likelihoods_y", "likelihoods_z", "x_hat"])
def test_our_network_reproduces_the_official_outputs(vector, official_outputs, name):
    official = vector["tensors"][name]
    ours = official_outputs[name]
    assert ours.shape == official.shape
    assert relative_error(ours, official) < FIDELITY_TOLERANCE


# ------------------------------------------------------------------------ import as a model


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    """The vector's weights imported twice, as lambdas 0.3 (quality 6) and 0.85 (quality 5)."""
    root = tmp_path_factory.mktemp("official-models")
    return import_official([(TINY_VECTOR, 0.3), (TINY_VECTOR, 0.85)], "official-test", root)


def vector_image(vector) -> SourceImage:
    rgb = (vector["tensors"]["x"][0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    return SourceImage(rgb=rgb, color_mode="rgb", bit_depth=8)


@needs_vector
def test_imported_model_directory(imported):
    meta = json.loads((imported / "model.json").read_text())
    assert meta["format_version"] == 2 and meta["default_quality"] == 5
    assert [(q["quality"], q["beta"], q["weights"]) for q in meta["qualities"]] == [
        (5, 0.85, "q5.safetensors"), (6, 0.3, "q6.safetensors")
    ]
    for entry in meta["qualities"]:
        assert hashlib.sha256((imported / entry["weights"]).read_bytes()).hexdigest() == entry["weights_sha256"]
    card = (imported / "MODEL_CARD.md").read_text()
    assert "LabShuHangGU/CCA" in card and "0.85" in card and "Licence" in card
    assert not [p for p in imported.parent.iterdir() if p.name.endswith(".part")]


@needs_vector
@pytest.mark.parametrize("quality", [5, 6])
def test_imported_model_codes_with_each_quality_s_weights(imported, vector, monkeypatch, quality):
    monkeypatch.setenv("CCACODEC_MODELS", str(imported.parent))
    model = load_model("official-test")
    # The exact float32 transforms: bf16 ones (the CPU default where native) differ by a grey level more.
    data = encode_image(vector_image(vector), model, quality=quality, context="grouped", device="cpu", precision="fp32")
    header = read_header(data)
    assert header.quality == quality and header.model_id == "official-test"
    assert header.weights_sha256 == hashlib.sha256((imported / f"q{quality}.safetensors").read_bytes()).digest()
    decoded = decode_image(data, device="cpu", precision="fp32").rgb  # the model and quality named in the file
    official = (vector["tensors"]["x_hat"][0].clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()
    assert np.abs(decoded.astype(np.float64) - official).max() <= 1


@needs_vector
def test_imported_model_refuses_other_qualities(imported, vector):
    model = load_model(imported)
    for quality in (5.5, 4, 8):
        with pytest.raises(UsageError, match=r"qualities 5, 6 only"):
            encode_image(vector_image(vector), model, quality=quality, device="cpu")


@needs_vector
def test_damaged_quality_weights_are_refused_when_used(imported, tmp_path):
    copy = tmp_path / "official-test"
    copy.mkdir()
    for f in imported.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "q6.safetensors").write_bytes(b"damaged")
    model = load_model(copy)  # the default quality (5) is intact
    with pytest.raises(ModelError, match="sha256"):
        model.at_quality(6)


def test_official_lambdas_take_the_paper_qualities():
    assert [official_quality(lam).quality for lam in (3.5, 1.8, 0.85, 0.3)] == [3, 4, 5, 6]
    with pytest.raises(UsageError, match="0.5 is not one of the paper's"):
        official_quality(0.5)


def test_import_refuses_bad_requests(tmp_path):
    with pytest.raises(UsageError, match="once"):
        import_official([(tmp_path / "a", 0.3), (tmp_path / "b", 0.3)], "x", tmp_path)
    with pytest.raises(UsageError, match="model id"):
        import_official([(tmp_path / "a", 0.3)], "../x", tmp_path)
    with pytest.raises(InputError, match="no such file"):
        import_official([(tmp_path / "a", 0.3)], "x", tmp_path)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------- command line


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


@needs_vector
def test_cli_import_official(tmp_path):
    result = run("import-official", TINY_VECTOR, "--lambda", 0.3, TINY_VECTOR, "--lambda", 1.8, "--model-id", "cli-official", "--out", tmp_path)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "cli-official").iterdir()) == [
        "MODEL_CARD.md", "model.json", "q4.safetensors", "q6.safetensors"
    ]
    again = run("import-official", TINY_VECTOR, "--lambda", 0.3, "--model-id", "cli-official", "--out", tmp_path)
    assert again.exit_code == 3 and "exists" in again.stderr


@needs_vector
def test_cli_import_official_installs_on_the_model_search_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CCACODEC_MODELS", str(tmp_path / "models"))
    result = run("import-official", TINY_VECTOR, "--lambda", 0.85)
    assert result.exit_code == 0, result.stderr
    assert load_model("cca-official").per_quality.keys() == {5}


def test_cli_import_official_errors(tmp_path):
    garbage = tmp_path / "garbage.pth.tar"
    garbage.write_bytes(b"not a checkpoint")
    cases = [
        (["import-official", tmp_path / "absent.pth.tar", "--lambda", 0.3], 3),
        (["import-official", garbage, "--lambda", 0.3], 5),
        (["import-official", garbage, "--lambda", 0.5], 2),
        (["import-official", garbage, garbage, "--lambda", 0.3], 2),
    ]
    for args, code in cases:
        result = run(*args, "--out", tmp_path / "models")
        assert result.exit_code == code, (args, result.stderr)
    assert not (tmp_path / "models").exists() or list((tmp_path / "models").iterdir()) == []
