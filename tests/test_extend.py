"""Extending a trained network's quality table above its top quality (`cca_codec.modeltools.extend`)."""
import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import lively_model, write_image

from cca_codec.core.checkpoint import load_model
from cca_codec.core.codec import decode_image, encode_image
from cca_codec.image.io import load_image
from cca_codec.image.metrics import psnr
from cca_codec.modeltools.extend import extend_gains, extended_table
from cca_codec.nn.quality import DEFAULT_QUALITIES, QualityPoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_table_continues_the_last_lambda_ratio():
    table = extended_table(DEFAULT_QUALITIES, 10)
    assert table[:8] == DEFAULT_QUALITIES and [p.quality for p in table] == list(range(1, 11))
    ratio = DEFAULT_QUALITIES[-1].lam / DEFAULT_QUALITIES[-2].lam
    for before, after in zip(table[7:], table[8:]):
        assert after.beta == before.beta == 0.3
        assert after.lam == pytest.approx(before.lam * ratio, rel=1e-12)


@pytest.mark.parametrize("table, top, message", [
    (DEFAULT_QUALITIES, 8, "must exceed"),
    (DEFAULT_QUALITIES[:1], 3, "Q >= 2"),
    ((QualityPoint(1, 3.0), QualityPoint(3, 1.0)), 4, "1..Q"),
    ((QualityPoint(1, 1.0), QualityPoint(2, 3.0)), 3, "does not rise"),
])
def test_tables_that_cannot_be_continued_are_refused(table, top, message):
    with pytest.raises(ValueError, match=message):
        extended_table(table, top)


def test_extension_keeps_the_trained_qualities_and_continues_the_gains():
    net = lively_model(seed=6).net.float().eval()
    with torch.no_grad():  # per-channel gains that differ between the two top rows
        net.gains.log_y[-1].add_(torch.linspace(0.0, 0.3, net.gains.log_y.shape[1]))
        net.gains.log_z[-2].sub_(0.2)
    wide = extend_gains(net, 10).eval()
    assert wide.gains.num_qualities == 10
    for name in ("log_y", "log_y_inv", "log_z", "log_z_inv"):
        old, new = getattr(net.gains, name), getattr(wide.gains, name)
        assert torch.equal(new[:8], old)
        torch.testing.assert_close(new[9] - new[8], old[-1] - old[-2])
        torch.testing.assert_close(new[8] - old[-1], old[-1] - old[-2])
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for q in (1.0, 3.5, 8.0):
            a, b = net(x, torch.tensor([q]), checkerboard=True), wide(x, torch.tensor([q]), checkerboard=True)
            assert torch.equal(a["x_hat"], b["x_hat"]) and torch.equal(a["likelihoods"]["y"], b["likelihoods"]["y"])
        # quality 10 quantises y finer than 8 by the square of the 7 -> 8 step, channel by channel
        g8, g10 = wide.gains(torch.tensor([8.0]))[0], wide.gains(torch.tensor([10.0]))[0]
        step = net.gains(torch.tensor([8.0]))[0] / net.gains(torch.tensor([7.0]))[0]
        torch.testing.assert_close(g10 / g8, step.square())


def test_extend_command_writes_a_model_that_codes_the_new_qualities(tmp_path, models_env):
    out = tmp_path / "q10"
    done = subprocess.run([sys.executable, "-m", "cca_codec.modeltools.extend", "test-tiny", str(out), "--top", "10"],
                          capture_output=True, text=True, check=True)
    assert [q["quality"] for q in json.loads(done.stdout)["qualities"]] == list(range(1, 11))
    model, original = load_model(out), load_model("test-tiny")
    assert model.model_id == "q10" and [p.quality for p in model.qualities] == list(range(1, 11))
    assert "extended_from" in model.info and model.weights_sha256 != original.weights_sha256
    image = load_image(write_image(tmp_path, 64, 96, name="e.png"))
    for quality in (8.0, 9.5, 10.0):
        decoded = decode_image(encode_image(image, model, quality=quality, device="cpu"), model, device="cpu")
        assert decoded.rgb.shape == image.rgb.shape and math.isfinite(psnr(image.rgb, decoded.rgb))
    refused = subprocess.run([sys.executable, "-m", "cca_codec.modeltools.extend", str(out), str(tmp_path / "again"), "--top", "9"],
                             capture_output=True, text=True)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == "error: --top 9 must exceed the table's top quality 10"
    assert not (tmp_path / "again").exists()
