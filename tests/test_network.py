"""The network: configurations, the context rules of the main and auxiliary models, the
checkerboard mask, gains and the CCA loss."""
import pytest
import torch

from cca_codec.nn.aux import AuxEntropyModel
from cca_codec.nn.config import CONFIGS, get_config
from cca_codec.nn.context import CheckerboardContext, anchor_mask
from cca_codec.nn.loss import CCALoss
from cca_codec.nn.model import CCAModel

TINY = get_config("cca-tiny")


def test_paper_configuration_has_the_papers_parameter_count():
    cfg = get_config("cca-paper")
    assert cfg.slice_sizes == [8, 28, 56, 92, 136]
    count = CCAModel(cfg).inference_parameter_count()
    assert abs(count - 64.99e6) / 64.99e6 < 0.005
    assert count == 64_988_067  # the official state dict's count, exactly


def test_every_configuration_splits_all_channels():
    for cfg in CONFIGS.values():
        sizes = cfg.slice_sizes
        assert sum(sizes) == cfg.latent_channels and len(sizes) == cfg.num_slices
        assert sizes == sorted(sizes) and min(sizes) >= 1


def test_checkerboard_context_sees_only_anchors():
    torch.manual_seed(0)
    ctx = CheckerboardContext(channels=3, head_width=4)
    anchors = anchor_mask(8, 9)
    y = torch.randn(1, 3, 8, 9)
    base = ctx(y)
    non_anchor = ~anchors
    # changing any non-anchor value (including the output position itself) changes no non-anchor output
    y2 = y + 5.0 * torch.randn_like(y) * non_anchor
    assert torch.equal(ctx(y2)[non_anchor.expand_as(base)], base[non_anchor.expand_as(base)])
    # changing an anchor next to a non-anchor changes that non-anchor's context
    y3 = y.clone()
    y3[0, :, 4, 4] += 1.0  # (4 + 4) even: an anchor
    changed = (ctx(y3) - base).abs().sum(1)[0]
    assert changed[4, 5] > 0 and changed[3, 4] > 0


def _slice_grads(context_model, y, lm, ls, k):
    """Gradient of slice k's likelihood w.r.t. every slice of y."""
    y = y.clone().requires_grad_(True)

    def lik(y_i, scale, mu):
        return torch.exp(-((y_i - mu) ** 2) / (scale**2 + 1))

    _, likelihoods = context_model.forward_train(y, lm, ls, lik)
    sizes = context_model.sizes
    start = sum(sizes[:k])
    likelihoods[:, start : start + sizes[k]].sum().backward()
    return [g.abs().sum().item() for g in y.grad.split(sizes, dim=1)]


@pytest.mark.parametrize("k", range(TINY.num_slices))
def test_aux_slice_never_sees_the_slice_before_it(k):
    torch.manual_seed(1)
    aux = AuxEntropyModel(TINY)
    for name, p in aux.named_parameters():  # non-zero NAF residual scales: every path carries signal
        if name.endswith(("beta", "gamma")):
            p.data.normal_(0, 0.3)
    y = torch.randn(1, TINY.latent_channels, 4, 4)
    lm, ls = torch.randn_like(y), torch.randn_like(y)
    grads = _slice_grads(aux.context, y, lm, ls, k)
    assert list(aux.context.context_slices(k)) == list(range(max(k - 1, 0)))
    assert grads[k] > 0
    if k >= 1:
        assert grads[k - 1] == 0.0  # the skipped slice
    for j in range(k - 1):
        assert grads[j] > 0, f"slice {k} should see slice {j}"
    for j in range(k + 1, TINY.num_slices):
        assert grads[j] == 0.0  # causality


@pytest.mark.parametrize("k", range(1, TINY.num_slices))
def test_main_slice_sees_every_earlier_slice(k):
    torch.manual_seed(2)
    net = CCAModel(TINY)
    y = torch.randn(1, TINY.latent_channels, 4, 4)
    grads = _slice_grads(net.context, y, torch.randn_like(y), torch.randn_like(y), k)
    assert all(grads[j] > 0 for j in range(k + 1))
    assert all(grads[j] == 0.0 for j in range(k + 1, TINY.num_slices))


def test_gains_interpolate_geometrically():
    net = CCAModel(TINY, num_qualities=3)
    with torch.no_grad():
        net.gains.log_y.copy_(torch.tensor([0.0, 1.0, 2.0])[:, None].expand_as(net.gains.log_y))
    g = net.gains(torch.tensor([1.0, 1.5, 3.0], dtype=torch.float64))[0][:, 0, 0, 0]
    assert torch.allclose(g, torch.exp(torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)))


@pytest.mark.parametrize("variant", ["official", "stop_gradient"])
@pytest.mark.parametrize("checkerboard", [False, True])
def test_cca_loss_trains_both_modes(variant, checkerboard):
    torch.manual_seed(3)
    net, aux = CCAModel(TINY), AuxEntropyModel(TINY)
    loss_fn = CCALoss(aux, variant=variant)
    x = torch.rand(2, 3, 64, 64)
    terms = loss_fn(net, x, torch.tensor([1.0, 4.0]), torch.tensor([0.05, 0.05]), torch.tensor([15.0, 1.8]), checkerboard)
    assert torch.isfinite(terms.loss)
    terms.loss.backward()
    g_a_grad = net.g_a.down[0].weight.grad
    aux_grad = aux.context.mean_heads[0][4].weight.grad
    assert g_a_grad is not None and g_a_grad.abs().sum() > 0
    assert aux_grad is not None and aux_grad.abs().sum() > 0
    if checkerboard:
        assert net.context.spatial[2].conv.weight.grad.abs().sum() > 0
    else:
        assert net.context.spatial[2].conv.weight.grad is None


@pytest.mark.parametrize("size", [(5, 7), (1, 1), (8, 6)])
def test_folded_stacks_compute_the_same_entropy_parameters(size):
    """`fold` (coding) and the unfolded network (training) give the same means, scales and LRP
    corrections to float64 rounding, the borders included (the folded bias map)."""
    torch.manual_seed(5)
    ctx = CCAModel(TINY).context.double().eval()
    for name, p in ctx.named_parameters():  # non-zero residual scales and biases: every term counts
        if name.endswith(("beta", "gamma", "bias")):
            p.data.normal_(0, 0.3)
    lm, ls = torch.randn(2, 1, TINY.latent_channels, *size, dtype=torch.float64)
    y_hats = [torch.randn(1, c, *size, dtype=torch.float64) for c in ctx.sizes]

    def run(folds=None) -> list[torch.Tensor]:
        out = []
        for i in range(len(ctx.sizes)):
            mean_feat, scale_feat = ctx.stack_features(i, lm, ls, y_hats[:i], folds)
            head_in = ctx.head_inputs(i, mean_feat, scale_feat, folds)
            spatial = ctx.spatial_context(i, y_hats[i]) if ctx.spatial is not None else None
            out += [*ctx.parameters(i, head_in), *ctx.parameters(i, head_in, spatial), ctx.refine(i, mean_feat, y_hats[i], folds)]
        return out

    with torch.no_grad():
        plain, folded = run(), run(ctx.fold())
        for a, b in zip(plain, folded):
            assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-11, atol=1e-11)
        assert any(not torch.equal(a, b) for a, b in zip(plain, folded))  # it did take the folded path


@pytest.mark.parametrize("stages", [0, 1, 3])
def test_float32_synthesis_stages_leave_autocast(stages):
    """g_s.float32_stages: the last N stages (and the transposed conv before each) compute in
    float32 under bf16 autocast, the others in bf16; gradients reach every stage."""
    torch.manual_seed(0)
    g_s = CCAModel(TINY, num_qualities=2).g_s
    g_s.float32_stages = stages
    dtypes = []
    for stage in g_s.blocks:
        stage.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    y = torch.randn(1, TINY.latent_channels, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_hat = g_s(y)
    x_hat.square().mean().backward()
    n = len(g_s.blocks)
    assert dtypes == [torch.bfloat16] * (n - stages) + [torch.float32] * stages
    assert x_hat.dtype == torch.float32 and x_hat.shape == (1, 3, 64, 64)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in g_s.parameters())
