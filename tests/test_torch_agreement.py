"""PyTorch as an independent oracle of the semantics (padding 'same' with even
kernels, pairs, dilation, groups), where torch is installed; skipped otherwise."""
import numpy as np
import pytest

import fastconv as fc

from cases import TORCH_CONFIGS as CONFIGS
from conftest import assert_matches, random_array

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_conv2d_and_grads_agree_with_torch(config, rng):
    x_shape, w_shape, stride, padding, dilation, groups = config
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    x, w, b = (random_array(rng, s) for s in (x_shape, w_shape, (w_shape[0],)))
    tx, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    ty = F.conv2d(tx, tw, tb, **kw)
    G = random_array(rng, tuple(ty.shape))
    ty.backward(torch.from_numpy(G))
    assert_matches(fc.conv2d(x, w, b, **kw), ty.detach().numpy())
    assert_matches(fc.conv2d_grad_input(G, w, x.shape, **kw), tx.grad.numpy())
    assert_matches(fc.conv2d_grad_weight(x, G, w.shape, **kw), tw.grad.numpy())
    assert_matches(fc.conv2d_grad_bias(G), tb.grad.numpy())


@pytest.mark.parametrize("config", [c for c in CONFIGS if c[5] == 1 and c[3] != "same"], ids=str)
def test_im2col_agrees_with_unfold(config, rng):
    x_shape, w_shape, stride, padding, dilation, _ = config
    padding = 0 if padding == "valid" else padding
    x = random_array(rng, x_shape)
    unfolded = F.unfold(torch.from_numpy(x), w_shape[2:], dilation=dilation, padding=padding,
                        stride=stride).numpy()  # (N, C*KH*KW, L)
    expected = unfolded.transpose(1, 0, 2).reshape(unfolded.shape[1], -1)
    assert np.array_equal(fc.im2col(x, w_shape[2:], stride=stride, padding=padding, dilation=dilation),
                          expected)


def test_linear_and_softmax_agree_with_torch(rng):
    x, W, b = random_array(rng, (5, 7)), random_array(rng, (7, 3)), random_array(rng, (3,))
    tx, tW = torch.from_numpy(x).requires_grad_(), torch.from_numpy(W).requires_grad_()
    ty = F.linear(tx, tW.T, torch.from_numpy(b))
    G = random_array(rng, (5, 3))
    ty.backward(torch.from_numpy(G))
    dx, dW, db = fc.linear_backward(x, W, G)
    assert_matches(fc.linear(x, W, b), ty.detach().numpy())
    assert_matches(dx, tx.grad.numpy())
    assert_matches(dW, tW.grad.numpy())
    logits = torch.from_numpy(random_array(rng, (4, 6, 5))).requires_grad_()
    s = torch.softmax(logits, dim=1)
    gs = random_array(rng, (4, 6, 5))
    s.backward(torch.from_numpy(gs))
    assert_matches(fc.softmax(logits.detach().numpy(), axis=1), s.detach().numpy())
    assert_matches(fc.softmax_backward(s.detach().numpy(), gs, axis=1), logits.grad.numpy())
