"""The CPU convolutions of cca_codec.nn.kernels against torch's, and their dispatch."""
import pytest
import torch
import torch.nn.functional as F

from cca_codec.nn import kernels
from cca_codec.nn.blocks import Conv2d, DepthwiseConv2d, deconv
from cca_codec.nn.context import CheckerboardContext, anchor_mask


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to float64 rounding: the taps are summed in another order."""
    return a.shape == b.shape and bool(((a - b).abs() <= 1e-12 * b.abs().max()).all())


@pytest.mark.parametrize("cin, cout, k, padding, batch", [(7, 5, 3, 1, 1), (4, 6, 1, 0, 2), (3, 2, 5, 2, 1), (5, 3, 3, 0, 2)])
def test_conv2d_by_taps_equals_torch(cin, cout, k, padding, batch):
    g = torch.Generator().manual_seed(cin * 100 + k)
    x = torch.randn(batch, cin, 9, 13, dtype=torch.float64, generator=g)
    w = torch.randn(cout, cin, k, k, dtype=torch.float64, generator=g)
    b = torch.randn(cout, dtype=torch.float64, generator=g)
    assert close(kernels.conv2d_by_taps(x, w, b, (padding, padding)), F.conv2d(x, w, b, padding=padding))
    assert close(kernels.conv2d_by_taps(x, w, None, (padding, padding)), F.conv2d(x, w, None, padding=padding))


def test_conv2d_by_taps_sums_only_the_given_taps():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 10, dtype=torch.float64, generator=g)
    w = torch.randn(6, 4, 5, 5, dtype=torch.float64, generator=g)
    taps = [(0, 1), (2, 2), (4, 3)]
    mask = torch.zeros(5, 5, dtype=torch.float64)
    mask[tuple(zip(*taps))] = 1
    assert close(kernels.conv2d_by_taps(x, w, None, (2, 2), taps), F.conv2d(x, w * mask, None, padding=2))


def test_depthwise_by_taps_equals_torch():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, 7, 11, dtype=torch.float64, generator=g)
    w = torch.randn(6, 1, 3, 3, dtype=torch.float64, generator=g)
    b = torch.randn(6, dtype=torch.float64, generator=g)
    assert close(kernels.depthwise_conv2d_by_taps(x, w, b, (1, 1)), F.conv2d(x, w, b, padding=1, groups=6))


def test_modules_dispatch_by_dtype_and_match_torch_modules():
    torch.manual_seed(3)
    conv, dw, up1, up2 = Conv2d(5, 4, 3, padding=1), DepthwiseConv2d(4), deconv(4, 3, 3, 1), deconv(4, 3, 5, 2)
    x = torch.randn(1, 5, 6, 8)
    h = torch.randn(1, 4, 6, 8)
    # float32: exactly torch's own modules
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
    assert torch.equal(dw(h), F.conv2d(h, dw.weight, dw.bias, padding=1, groups=4))
    assert torch.allclose(up1(h), F.conv_transpose2d(h, up1.weight, up1.bias, padding=1), atol=1e-6)
    # three output channels: by phases, torch's sums in another order
    assert torch.allclose(up2(h), F.conv_transpose2d(h, up2.weight, up2.bias, stride=2, padding=2, output_padding=1), atol=1e-5)
    # float64: the by-taps kernels, equal to torch's sums up to rounding
    for module in (conv, dw, up1, up2):
        module.double()
    x, h = x.double(), h.double()
    assert close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
    assert close(dw(h), F.conv2d(h, dw.weight, dw.bias, padding=1, groups=4))
    assert close(up1(h), F.conv_transpose2d(h, up1.weight, up1.bias, padding=1))
    assert close(up2(h), F.conv_transpose2d(h, up2.weight, up2.bias, stride=2, padding=2, output_padding=1))


@pytest.mark.parametrize(
    "kernel, stride, padding, output_padding, size",
    [(5, 2, 2, 1, (6, 9)), (3, 2, 1, 1, (5, 4)), (4, 2, 1, 0, (3, 7)), (5, 3, 1, 2, (4, 5)), (3, 2, 0, 0, (1, 1))],
)
def test_transposed_conv_by_phases_matches_torch(kernel, stride, padding, output_padding, size):
    g = torch.Generator().manual_seed(kernel * 10 + stride)
    x = torch.randn(2, 5, *size, dtype=torch.float64, generator=g)
    w = torch.randn(5, 3, kernel, kernel, dtype=torch.float64, generator=g)
    b = torch.randn(3, dtype=torch.float64, generator=g)
    args = ((stride, stride), (padding, padding), (output_padding, output_padding))
    expected = F.conv_transpose2d(x, w, b, stride=stride, padding=padding, output_padding=output_padding)
    got = kernels.transposed_conv2d_by_phases(x, w, b, *args)
    assert got.shape == expected.shape and close(got, expected)
    assert close(kernels.transposed_conv2d_by_phases(x, w, None, *args), expected - b.view(1, -1, 1, 1))
    # float32 channels_last, and gradients (training runs the same kernel)
    xf = x.float().contiguous(memory_format=torch.channels_last).requires_grad_()
    wf, bf = w.float().requires_grad_(), b.float().requires_grad_()
    kernels.transposed_conv2d_by_phases(xf, wf, bf, *args).square().sum().backward()
    grads = [t.grad for t in (xf, wf, bf)]
    for t in (xf, wf, bf):
        t.grad = None
    F.conv_transpose2d(xf, wf, bf, stride=stride, padding=padding, output_padding=output_padding).square().sum().backward()
    for ours, theirs in zip(grads, (xf.grad, wf.grad, bf.grad)):
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-3)


def test_checkerboard_context_reads_anchors_only_in_float64():
    torch.manual_seed(4)
    ctx = CheckerboardContext(3, 4).double()
    y = torch.randn(1, 3, 8, 10, dtype=torch.float64)
    anchors = anchor_mask(8, 10)
    reference = F.conv2d(y * anchors, ctx.conv.weight * ctx.kernel_mask, ctx.conv.bias, padding=2)
    assert close(ctx(y), reference)
    changed = torch.where(anchors, y, y + 5.0)  # moving the non-anchors changes nothing
    assert torch.equal(ctx(changed), ctx(y))


def test_convolutions_initialise_like_torch_unless_weights_come_later():
    from cca_codec.nn.blocks import TransposedConv2d, weights_loaded_later

    for ours, theirs, args in [(Conv2d, torch.nn.Conv2d, (4, 6, 3)), (TransposedConv2d, torch.nn.ConvTranspose2d, (4, 6, 5))]:
        torch.manual_seed(5)
        a = ours(*args)
        torch.manual_seed(5)
        b = theirs(*args)
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
        torch.manual_seed(5)
        state = torch.random.get_rng_state()
        with weights_loaded_later():
            ours(*args)
        assert torch.equal(torch.random.get_rng_state(), state)  # nothing drawn: no initialisation ran
        torch.manual_seed(5)
        assert torch.equal(ours(*args).weight, b.weight)  # and outside the block it runs again
