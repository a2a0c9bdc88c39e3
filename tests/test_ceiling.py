"""The reconstruction ceiling (`cca_codec.measure.ceiling`) and widening a trained network (`cca_codec.modeltools.widen`)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import write_image

from cca_codec.core.checkpoint import in_memory_model, load_model
from cca_codec.image.io import load_image
from cca_codec.image.metrics import psnr
from cca_codec.measure.ceiling import autoencoder_ceiling, reconstruct_unquantized
from cca_codec.modeltools.widen import widen

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ceiling_of_a_synthesis_that_outputs_grey(tmp_path):
    """With g_s's last layer zeroed and its bias 0.5, every reconstruction is grey 128 (0.5 * 255
    rounds to even): the ceiling must be the mean over images of each image's PSNR against grey,
    whatever the image size (padded to 64, cropped back) and quality."""
    model = in_memory_model("cca-tiny", model_id="grey")
    with torch.no_grad():
        model.net.g_s.up[-1].weight.zero_()
        model.net.g_s.up[-1].bias.fill_(0.5)
    paths = [write_image(tmp_path, 37, 70, name="a.png"), write_image(tmp_path, 64, 64, name="b.png")]
    expected = np.mean([psnr(load_image(p).rgb, np.full_like(load_image(p).rgb, 128)) for p in paths])
    for quality in (1.0, 8.0, 3.5):
        assert autoencoder_ceiling(model, paths, quality) == pytest.approx(expected, abs=1e-9)
    out = reconstruct_unquantized(model, load_image(paths[0]).rgb, 8.0)
    assert out.shape == (37, 70, 3) and out.dtype == np.uint8 and (out == 128).all()


def test_ceiling_applies_the_quality_gains_and_defaults_to_the_top_quality(tmp_path):
    """g_s(g_a(x) * g_y * g_y_inv) with the quality's gains: here the top quality's inverse gain is
    made e times too large, so its reconstruction is not the one without gains."""
    model = in_memory_model("cca-tiny", model_id="gains", seed=3)
    net = model.net.float().eval()
    with torch.no_grad():
        net.gains.log_y_inv[-1].add_(1.0)
        for name, p in net.g_s.named_parameters():  # a synthesis that responds to the scale of y
            if name.endswith((".beta", ".gamma")):
                p.normal_(0, 0.5)
    path = write_image(tmp_path, 64, 64, name="c.png")
    rgb = load_image(path).rgb
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y = net.g_a(x) * net.gains.log_y[-1].exp()[None, :, None, None] * net.gains.log_y_inv[-1].exp()[None, :, None, None]
        by_hand = (net.g_s(y)[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    top = reconstruct_unquantized(model, rgb, 8.0)
    assert np.array_equal(top, by_hand)
    assert not np.array_equal(reconstruct_unquantized(model, rgb, 1.0), top)
    assert autoencoder_ceiling(model, [path]) == autoencoder_ceiling(model, [path], 8.0) == psnr(rgb, top)


def test_ceiling_command(tmp_path, models_env):
    write_image(tmp_path, 64, 96, name="d.png")
    done = subprocess.run([sys.executable, "-m", "cca_codec.measure.ceiling", str(tmp_path), "--model", "test-tiny", "--json"],
                          capture_output=True, text=True, check=True)
    record = json.loads(done.stdout)
    assert record["model"] == "test-tiny" and record["quality"] == 8.0 and record["images"] == 1
    expected = autoencoder_ceiling(load_model("test-tiny"), [tmp_path / "d.png"])
    assert record["psnr"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("stages", [(0,), (0, 1)])
def test_widening_keeps_the_function(stages):
    net = in_memory_model("cca-tiny", model_id="narrow", seed=2).net.float().eval()
    with torch.no_grad():  # NAF-blocks start as identity (beta = gamma = 0): give them a part to play
        for name, p in net.named_parameters():
            if name.endswith((".beta", ".gamma")):
                p.normal_(0, 0.5)
    wide = widen(net, 2, stages).eval()
    for i, (before, after) in enumerate(zip(net.cfg.ae_dims, wide.cfg.ae_dims)):
        assert after == (2 * before if i in stages else before)
    x = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    q = torch.tensor([5.0])
    with torch.no_grad():
        a, b = net(x, q, checkerboard=True), wide(x, q, checkerboard=True)
    torch.testing.assert_close(b["y"], a["y"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b["x_hat"], a["x_hat"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b["likelihoods"]["y"], a["likelihoods"]["y"], atol=1e-6, rtol=1e-5)


def test_widened_copies_receive_different_gradients():
    """The copies of a channel carry different shares of its outgoing weights, so training can
    pull them apart (with equal shares they would stay copies for ever)."""
    wide = widen(in_memory_model("cca-tiny", model_id="n", seed=2).net.float(), 2, (0,))
    out = wide.g_s(wide.g_a(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))))
    out.square().mean().backward()
    grad = wide.g_a.down[0].weight.grad  # rows c and c + 16 are copies of one channel
    width = in_memory_model("cca-tiny", model_id="n").net.cfg.ae_dims[0]
    assert not torch.allclose(grad[:width], grad[width:])
    assert torch.equal(wide.g_a.down[0].weight[:width], wide.g_a.down[0].weight[width:])


def test_widening_refuses_the_stage_the_hyperprior_reads():
    with pytest.raises(ValueError, match="stages"):
        widen(in_memory_model("cca-tiny", model_id="n").net, 2, (2,))
