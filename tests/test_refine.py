"""Encoder effort: latent refinement that the unchanged decoder reads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cca_codec.base.errors import UsageError
from cca_codec.cli import cli
from cca_codec.core import refine
from cca_codec.core.checkpoint import load_model
from cca_codec.core.codec import decode_image, encode_image
from cca_codec.entropy.tables import CDFTables
from cca_codec.format.container import read_container
from cca_codec.image.io import SourceImage
from cca_codec.image.metrics import bits_per_pixel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "seeding.png"


def test_sga_rounding_lands_between_floor_and_ceiling_and_hardens_as_it_cools():
    values = torch.linspace(-3.0, 3.0, 601, dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    soft = refine.sga_round(values, 0.5, generator)
    assert torch.all(soft >= torch.floor(values) - 1e-9) and torch.all(soft <= torch.floor(values) + 1 + 1e-9)
    cold = refine.sga_round(values, 1e-3, generator)
    away_from_halves = (values - torch.floor(values) - 0.5).abs() > 0.05
    assert torch.allclose(cold[away_from_halves], torch.round(values)[away_from_halves], atol=1e-6)
    probe = values.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(refine.sga_round(probe, 0.3, generator).sum(), [probe])
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0


def test_rate_model_is_compressais_gaussian_conditional():
    from compressai.entropy_models import GaussianConditional

    generator = torch.Generator().manual_seed(0)
    values = torch.randn(2, 8, 5, 5, generator=generator) * 4
    scales = torch.rand(2, 8, 5, 5, generator=generator) * 6
    means = torch.randn(2, 8, 5, 5, generator=generator)
    conditional = GaussianConditional(None)
    expected = conditional.likelihood_lower_bound(conditional._likelihood(values, scales, means)).clamp_min(refine.LIKELIHOOD_FLOOR)
    assert torch.allclose(refine.discretized_gaussian_likelihood(values, scales, means), expected, rtol=1e-4, atol=1e-7)


def test_schedules_cool_and_decay_and_efforts_are_checked():
    schedule = refine.Schedule(10)
    assert schedule.tau(0) == pytest.approx(schedule.tau_start) and schedule.tau(9) == pytest.approx(schedule.tau_end)
    assert schedule.learning_rate(0) == pytest.approx(schedule.lr) and schedule.learning_rate(9) < schedule.lr / 10
    assert refine.effort_schedule(1) is None
    steps = [refine.effort_schedule(e).steps for e in range(2, 10)]
    assert steps == sorted(steps) and len(set(steps)) == 8
    for bad in (0, 10, 2.5):
        with pytest.raises(UsageError, match="effort"):
            refine.effort_schedule(bad)


@pytest.fixture(scope="module")
def shipped():
    return load_model()


@pytest.fixture(scope="module")
def crop() -> SourceImage:
    with Image.open(SAMPLE) as img:
        rgb = np.array(img.convert("RGB").crop((256, 96, 384, 224)))
    return SourceImage(rgb=np.ascontiguousarray(rgb), color_mode="rgb", bit_depth=8)


def objective(image: SourceImage, data: bytes, model, quality: float) -> float:
    """R + lambda * 255^2 * MSE of a real file, R in bits per pixel."""
    decoded = decode_image(data, model, device="cpu").rgb
    mse = np.mean((image.rgb.astype(np.float64) - decoded) ** 2) / 255**2
    return bits_per_pixel(len(data), image.width, image.height) + model.lam(quality) * 255**2 * mse


def test_refined_files_decode_with_the_unchanged_decoder_and_cost_less(shipped, crop):
    plain = encode_image(crop, shipped, quality=6, device="cpu")
    refined = encode_image(crop, shipped, quality=6, device="cpu", effort=4)
    assert refined != plain
    header = read_container(refined).header
    assert header == read_container(plain).header  # same format, quality, model and weights: nothing to tell apart
    assert objective(crop, refined, shipped, 6) < objective(crop, plain, shipped, 6)
    assert encode_image(crop, shipped, quality=6, device="cpu", effort=4) == refined  # seeded: repeatable here
    assert encode_image(crop, shipped, quality=6, device="cpu", effort=1) == plain


def test_progress_counts_steps_over_all_tiles(shipped, crop):
    seen: list[tuple[int, int]] = []
    data = encode_image(crop, shipped, quality=2, device="cpu", effort=2, tile=64, progress=lambda d, t: seen.append((d, t)))
    steps = refine.EFFORT_STEPS[2]
    assert seen == [(d, 4 * steps) for d in range(1, 4 * steps + 1)]
    assert decode_image(data, shipped, device="cpu").rgb.shape == crop.rgb.shape


def test_command_line_effort(tmp_path):
    source = tmp_path / "crop.png"
    with Image.open(SAMPLE) as img:
        img.convert("RGB").crop((0, 0, 128, 64)).save(source)
    out = tmp_path / "crop.cca"
    result = CliRunner().invoke(cli, ["encode", str(source), "-o", str(out), "--effort", "2", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert '"effort": 2' in result.stdout and out.stat().st_size > 0
    decoded = CliRunner().invoke(cli, ["decode", str(out), "-o", str(tmp_path / "back.png"), "--device", "cpu"])
    assert decoded.exit_code == 0
    bad = CliRunner().invoke(cli, ["encode", str(source), "-o", str(tmp_path / "x.cca"), "--effort", "10"])
    assert bad.exit_code == UsageError.exit_code and not (tmp_path / "x.cca").exists()


def test_pixels_outside_the_image_do_not_steer_the_refinement(shipped, crop):
    net = shipped.at_quality(4).net
    x = torch.from_numpy(crop.rgb).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y = net.g_a(x)
        z = net.h_a(y)
    gains = torch.ones(1, y.shape[1], 1, 1), torch.ones(1, z.shape[1], 1, 1)
    z_rate = refine.TableRate(CDFTables.from_module(net.entropy_bottleneck), torch.device("cpu"))
    weights = torch.ones(1, 1, *x.shape[-2:])
    weights[..., 64:] = 0  # as the padding right of a 64-pixel-wide image
    elsewhere = x.clone()
    elsewhere[..., 64:] = torch.rand(elsewhere[..., 64:].shape, generator=torch.Generator().manual_seed(3))

    def refined(target: torch.Tensor, pixel_weights: torch.Tensor | None) -> torch.Tensor:
        y_new, z_new = refine.refine_latents(
            net, target, y, z, *gains, z_rate, shipped.lam(4), True, refine.Schedule(3), pixel_weights=pixel_weights
        )
        assert y_new.shape == y.shape and z_new.shape == z.shape and not torch.equal(z_new, z)  # z is refined too
        return torch.cat([y_new.flatten(), z_new.flatten()])

    assert torch.equal(refined(x, weights), refined(elsewhere, weights))
    assert not torch.equal(refined(x, None), refined(elsewhere, None))
    with pytest.raises(ValueError, match="sum to zero"):
        refined(x, torch.zeros_like(weights))


def test_z_rate_is_what_the_z_tables_charge_and_interpolates_between_symbols(shipped):
    tables = CDFTables.from_module(shipped.net.entropy_bottleneck)
    z_rate = refine.TableRate(tables, torch.device("cpu"))
    channels = len(tables)
    j = 2
    values = torch.arange(tables.escape_value(j), dtype=torch.float32)
    symbols = torch.zeros(1, channels, 1, values.numel())
    symbols[0, j, 0] = values + float(tables.offset[j])
    charged = z_rate(symbols)[0, j, 0]
    row = tables.cdf[j, : tables.length[j]]
    expected = -np.log2(np.diff(row)[: values.numel()] / row[-1])
    assert np.allclose(charged.numpy(), expected, atol=1e-4)
    middle = symbols.clone()
    middle[0, j, 0, :-1] += 0.25
    between = z_rate(middle)[0, j, 0, :-1]
    assert torch.allclose(between, 0.75 * charged[:-1] + 0.25 * charged[1:], atol=1e-4)
    far = torch.full((1, channels, 1, 1), 1e4)
    assert torch.isfinite(z_rate(far)).all()  # past the range: the escape's cost


def test_pixel_weights_are_the_blend_weights_and_zero_on_the_padding():
    from cca_codec.core.codec import _padded, _pixel_weights
    from cca_codec.format.tiling import choose_layout

    layout = choose_layout(150, 200, 64, 64)
    assert layout.count > 1
    total = np.zeros((150, 200))
    for index in range(layout.count):
        rows, cols = layout.extent(index)
        height, width = rows.stop - rows.start, cols.stop - cols.start
        weights = _pixel_weights(layout, index, torch.Size(_padded((height, width), 64)))[0, 0].numpy()
        assert weights.shape == _padded((height, width), 64) and weights.shape != (height, width)
        assert not weights[height:].any() and not weights[:, width:].any()
        total[rows, cols] += weights[:height, :width]
    assert np.allclose(total, 1.0)  # every image pixel counts once, over the tiles that code it
