"""Rate control (cca_codec.core.ratecontrol): real encodings land within tolerance, range ends are
reported, bad values are usage errors; through the Python API and `ccacodec encode`.

Rate targets use a small random model whose gains spread the latents (`lively_model`: its rate
rises with quality); PSNR targets need a model that trades rate for fidelity, the shipped one,
on a small crop.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from conftest import lively_model, sample_pixels, write_image

from cca_codec.base.errors import UsageError
from cca_codec.cli import cli
from cca_codec.core.checkpoint import QualityNetwork, load_model, save_model_dir, save_per_quality_model_dir
from cca_codec.core.codec import decode_image, encode_image
from cca_codec.core.ratecontrol import (
    CLOSEST,
    HIGHEST,
    LOWEST,
    NEIGHBOUR_PROBES,
    WITHIN,
    Target,
    encode_to_target,
    search_grid,
    searched_qualities,
)
from cca_codec.format.container import read_container
from cca_codec.image.io import SourceImage, load_image
from cca_codec.image.metrics import psnr
from cca_codec.nn.quality import DEFAULT_QUALITIES

LIVELY = "test-lively"

pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def model():
    return lively_model(LIVELY)


@pytest.fixture(scope="module")
def lively_env(tmp_path_factory, model):
    """A models root holding the lively model as a model directory (float32: the same weights)."""
    root = tmp_path_factory.mktemp("lively-models")
    save_model_dir(model, root / LIVELY, dtype=torch.float32)
    return root


@pytest.fixture
def on_path(lively_env, monkeypatch):
    monkeypatch.setenv("CCACODEC_MODELS", str(lively_env))


def photo(height: int, width: int) -> SourceImage:
    return SourceImage(rgb=sample_pixels(height, width), color_mode="rgb", bit_depth=8)


def rate_range(model, image: SourceImage, **coding) -> tuple[float, float]:
    """bpp at the lowest and highest quality."""
    ends = (encode_image(image, model, quality=q, device="cpu", **coding) for q in (1, len(model.qualities)))
    return tuple(8 * len(data) / (image.width * image.height) for data in ends)


@pytest.mark.parametrize("fraction", [0.15, 0.5, 0.85])
@pytest.mark.parametrize("context", ["grouped", "checkerboard"])
def test_bpp_target_lands_within_two_percent(model, fraction, context):
    image = photo(64, 96)
    low, high = rate_range(model, image, context=context)
    goal = low * (high / low) ** fraction
    result = encode_to_target(image, model, Target("bpp", goal), context=context, device="cpu")
    assert result.status == WITHIN and result.met, result.message
    bpp = 8 * len(result.data) / (64 * 96)
    assert abs(bpp / goal - 1) <= 0.02 and bpp == result.achieved
    header = read_container(result.data).header
    assert header.quality == result.quality and header.context_mode == context
    # the chosen file is the probe at that quality, as a plain encode makes it
    assert result.data == encode_image(image, model, quality=result.quality, context=context, device="cpu")
    qualities = [trial.quality for trial in result.trials]
    assert len(set(qualities)) == len(qualities) <= 8, "no quality is encoded twice"
    assert f"quality {result.quality:g} gives {bpp:.3f} bpp" in result.message


def test_size_target_with_tiles(model):
    image = photo(128, 160)
    low, high = rate_range(model, image, tile=64)
    goal = round((low + high) / 2 * 128 * 160 / 8)
    result = encode_to_target(image, model, Target("size", goal), device="cpu", tile=64)
    assert result.met, result.message
    assert abs(len(result.data) / goal - 1) <= 0.02
    container = read_container(result.data)
    assert len(container.tiles) == 6 and container.header.tile_width == 64


@pytest.mark.parametrize(("goal", "status", "quality"), [(0.05, LOWEST, 1.0), (40.0, HIGHEST, 8.0)])
def test_targets_out_of_range_stop_at_the_ends(model, goal, status, quality):
    result = encode_to_target(photo(32, 48), model, Target("bpp", goal), device="cpu")
    assert (result.status, result.quality, result.met) == (status, quality, False)
    end = "lowest" if status == LOWEST else "highest"
    assert f"target {goal:g} bpp is out of the model's range: its {end} quality, {quality:g}, gives" in result.message
    assert len(result.trials) <= 3


@pytest.fixture(scope="module")
def shipped():
    return load_model()


def test_psnr_target_lands_within_005_db(shipped):
    """Half-way between the ends of the PSNR range. On this crop PSNR jitters by about 0.1 dB
    between neighbouring qualities (the shipped weights of stint 6: the bracket closed on 3.74 and
    3.75, 36.56 and 36.79 dB, around 36.67), so this needs the search of a crossing's neighbours."""
    image = photo(96, 128)
    ends = [psnr(image.rgb, decode_image(encode_image(image, shipped, quality=q, device="cpu"), shipped, device="cpu").rgb) for q in (1, 8)]
    goal = round(sum(ends) / 2, 2)
    result = encode_to_target(image, shipped, Target("psnr", goal), device="cpu")
    assert result.met, result.message
    decoded = decode_image(result.data, shipped, device="cpu")
    assert abs(psnr(image.rgb, decoded.rgb) - goal) <= 0.05
    assert result.achieved == pytest.approx(psnr(image.rgb, decoded.rgb))
    assert 1 < result.quality < 8 and len(result.trials) <= 8 + NEIGHBOUR_PROBES


def test_psnr_of_a_gray_image_is_over_its_one_channel(shipped, tmp_path):
    image = load_image(write_image(tmp_path, 48, 64, "L"))
    result = encode_to_target(image, shipped, Target("psnr", 34.0), device="cpu")
    decoded = decode_image(result.data, shipped, device="cpu")
    assert decoded.color_mode == "gray"
    assert result.achieved == pytest.approx(psnr(image.rgb[..., 0], decoded.rgb[..., 0]))


def test_a_model_with_one_network_per_quality_is_searched_over_its_qualities(tmp_path):
    """Per-quality networks (as imported official checkpoints are): only their listed qualities."""
    def networks():
        for quality, log_gain in ((3, 2.0), (4, 3.0), (5, 4.0), (6, 5.0)):
            net = lively_model(seed=quality).net
            with torch.no_grad():
                net.gains.log_y.data = torch.full((1, net.gains.log_y.shape[1]), log_gain)
                net.gains.log_y_inv.data = -net.gains.log_y.data
                for name in ("log_z", "log_z_inv"):
                    getattr(net.gains, name).data = getattr(net.gains, name).data[:1]
            yield DEFAULT_QUALITIES[quality - 1], net

    model = load_model(save_per_quality_model_dir("per-quality", networks(), tmp_path / "pq", default_quality=4))
    assert searched_qualities(model) == [3.0, 4.0, 5.0, 6.0]
    image = photo(48, 64)
    sizes = {q: len(encode_image(image, model, quality=q, device="cpu")) for q in (3.0, 4.0, 5.0, 6.0)}
    assert sizes[3.0] < sizes[4.0] < sizes[5.0] < sizes[6.0], sizes
    result = encode_to_target(image, model, Target("size", sizes[5.0] + 1), device="cpu")
    assert (result.quality, result.status) == (5.0, WITHIN)
    assert isinstance(model.at_quality(result.quality), QualityNetwork)


def test_search_ends_at_the_closest_quality_when_no_grid_point_is_within_tolerance():
    """A rate that jumps over the tolerance band: the search ends between two neighbours."""
    grid = [1 + k / 100 for k in range(701)]
    probed: list[int] = []

    def probe(index: int) -> tuple[float, bool]:
        probed.append(index)
        error = math.log((1.0 if index < 300 else 1.1) / 1.04)
        return error, abs(math.exp(error) - 1) <= 0.02

    index, status = search_grid(probe, grid, 300, 0.25)
    assert status == CLOSEST and 300 in probed and len(set(probed)) == len(probed) <= 20
    assert index == max(i for i in probed if i < 300)  # 1.0 is 3.8 % below 1.04, 1.1 is 5.8 % above


def test_search_tries_the_neighbours_of_a_crossing_that_misses():
    """A PSNR that jitters: the bracket closes on 300 and 301, which miss by 0.2 dB either way;
    of their neighbours, 297 is within tolerance (the rest of the jitter band misses too)."""
    grid = [1 + k / 100 for k in range(701)]
    probed: list[int] = []

    def probe(index: int) -> tuple[float, bool]:
        probed.append(index)
        if index == 297:
            error = -0.03
        elif abs(index - 300.5) < 5:
            error = math.copysign(0.2, index - 300.5)
        else:
            error = 0.03 * (index - 300.5)
        return error, abs(error) <= 0.05

    index, status = search_grid(probe, grid, 300, 0.5)
    assert (index, status) == (297, WITHIN)
    assert {300, 301} <= set(probed) and len(set(probed)) == len(probed)
    # After the bracket closed on 300 and 301: alternately below and above, 303 skipped (the walk probed it).
    assert probed[probed.index(301) + 1:] == [299, 302, 298, 297] and 303 in probed


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bpp": 0.5, "size": 1000}, "give one rate target (bpp, PSNR or size), not bpp and size"),
        ({"psnr": 30.0, "quality": 4}, "give a quality or a target, not both"),
        ({"bpp": -0.5}, "target bpp must be a positive number, got -0.5"),
        ({"psnr": math.nan}, "target PSNR must be a positive number, got nan"),
        ({"size": 10.5}, "target size must be a positive whole number of bytes, got 10.5"),
    ],
)
def test_bad_targets_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Target.from_options(**options)
    assert Target.from_options() is None


# ------------------------------------------------------------------------------ command line


def run(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_target_bpp_on_several_files_reports_each(on_path, model, tmp_path):
    sources = [write_image(tmp_path, 48, 64, name="a.png"), write_image(tmp_path, 64, 48, name="b.png")]
    low, high = rate_range(model, photo(48, 64))
    goal = round(math.sqrt(low * high), 3)
    result = run("encode", *sources, "-d", tmp_path / "out", "--model", LIVELY, "--device", "cpu", "--target-bpp", goal, "--json")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["output"]).name for r in records] == ["a.cca", "b.cca"]
    for record in records:
        rate = record["rate_control"]
        assert rate["status"] == WITHIN and rate["target"] == "bpp" and rate["value"] == goal
        assert abs(record["bpp"] / goal - 1) <= 0.02 and rate["achieved"] == record["bpp"]
        assert record["quality"] == rate["quality"] == read_container(Path(record["output"]).read_bytes()).header.quality
        assert rate["encodes"] == len(rate["tried"])
    lines = [line for line in result.stderr.splitlines() if line.startswith("rate control: ")]
    assert len(lines) == 2 and f"for a target of {goal:g} bpp (within 2 %)" in lines[0]


def test_cli_target_out_of_range_warns_and_writes_the_end(on_path, tmp_path):
    src = write_image(tmp_path, 32, 32)
    out = tmp_path / "x.cca"
    result = run("encode", src, "-o", out, "--model", LIVELY, "--device", "cpu", "--target-size", 10, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        line for line in result.stderr.splitlines() if line.startswith("ccacodec: warning: ")
    ]
    assert "target 10 bytes is out of the model's range: its lowest quality, 1, gives" in result.stderr
    assert read_container(out.read_bytes()).header.quality == 1.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--target-bpp", "-1"], "target bpp must be a positive number"),
        (["--target-psnr", "inf"], "target PSNR must be a positive number"),
        (["--target-size", "0"], "target size must be a positive whole number of bytes"),
        (["--target-bpp", "0.5", "--target-psnr", "30"], "not bpp and PSNR"),
        (["--target-bpp", "0.5", "-q", "3"], "give a quality or a target, not both"),
    ],
)
def test_cli_bad_targets_exit_2_with_one_line(on_path, tmp_path, options, message):
    src = write_image(tmp_path, 16, 16)
    result = run("encode", src, "-o", tmp_path / "x.cca", "--model", LIVELY, *options)
    assert result.exit_code == UsageError.exit_code
    assert result.stderr.splitlines() == [f"ccacodec: error: {result.stderr.strip().split('error: ', 1)[1]}"]
    assert message in result.stderr
    assert not (tmp_path / "x.cca").exists()


def test_rate_control_at_an_effort_searches_at_effort_1_first(shipped):
    image = photo(64, 96)
    low, high = rate_range(shipped, image)
    goal = round(math.sqrt(low * high), 3)
    result = encode_to_target(image, shipped, Target("bpp", goal), device="cpu", effort=2)
    assert result.met and result.effort == 2, result.message
    assert result.pilot and all(trial.quality != result.quality or trial.data != result.data for trial in result.pilot)
    assert result.data == encode_image(image, shipped, quality=result.quality, device="cpu", effort=2)
    assert f"at effort 2 after {len(result.pilot)} pilot encode" in result.message
    record = result.to_dict()
    assert (record["effort"], record["pilot_encodes"], record["encodes"]) == (2, len(result.pilot), len(result.trials))
    assert len(result.trials) <= len(result.pilot) + 1  # the pilot leaves the refined search little to do

    direct = encode_to_target(image, shipped, Target("bpp", goal), device="cpu", effort=2, pilot=False)
    assert direct.met and direct.pilot == () and "pilot" not in direct.message
    for trial in direct.trials:
        assert trial.data == encode_image(image, shipped, quality=trial.quality, device="cpu", effort=2)


def test_a_bad_effort_is_refused_before_any_encoding(shipped, monkeypatch):
    import cca_codec.core.ratecontrol as ratecontrol

    monkeypatch.setattr(ratecontrol, "encode_image", lambda *a, **k: pytest.fail("encoded"))
    with pytest.raises(UsageError, match="effort"):
        encode_to_target(photo(32, 48), shipped, Target("bpp", 0.5), device="cpu", effort=10)
