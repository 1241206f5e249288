"""fastconv.layers: the drop-in classes agree with the functions, train, and
run the same on fastconv.reference."""
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import fastconv as fc
from fastconv.layers import Conv2d, Flatten, Linear, ReLU, Softmax

from conftest import assert_matches, central_difference, random_array, relative_error

ROOT = pathlib.Path(__file__).resolve().parent.parent


def network(ops, dtype=np.float64):
    return [Conv2d(2, 4, 3, padding=1, seed=0, dtype=dtype, ops=ops), ReLU(),
            Conv2d(4, 6, (3, 2), stride=2, seed=1, dtype=dtype, ops=ops), ReLU(), Flatten(),
            Linear(6 * 3 * 4, 5, seed=2, dtype=dtype, ops=ops), Softmax(ops=ops)]


def forward(layers, X):
    for layer in layers:
        X = layer.forward(X)
    return X


def backward(layers, grad):
    for layer in reversed(layers):
        grad = layer.backward(grad)
    return grad


def test_conv2d_layer_matches_the_functions(rng):
    layer = Conv2d(3, 5, 3, stride=2, padding=1, seed=4)
    X = random_array(rng, (2, 3, 9, 9))
    Y = layer.forward(X)
    assert layer.weights.shape == (5, 3, 3, 3) and layer.biases.shape == (5, 1)
    assert_matches(Y, fc.reference.conv2d(X, layer.weights, layer.biases[:, 0], stride=2, padding=1))
    G = random_array(rng, Y.shape)
    dX = layer.backward(G)
    assert_matches(dX, fc.reference.conv2d_grad_input(G, layer.weights, X.shape, stride=2, padding=1))
    assert_matches(layer.dweights, fc.reference.conv2d_grad_weight(X, G, layer.weights.shape,
                                                                   stride=2, padding=1))
    assert layer.dbiases.shape == (5, 1)


def test_parameters_can_be_set_like_the_classic_classes(rng):
    layer = Conv2d(2, 3, 3)
    layer.weights = np.ones((3, 2, 3, 3))
    layer.biases = np.full((3, 1), 0.5)
    X = np.ones((1, 2, 3, 3))
    assert np.array_equal(layer.forward(X), np.full((1, 3, 1, 1), 18.5))
    linear = Linear(4, 2)
    linear.weights, linear.biases = np.ones((4, 2)), np.zeros((1, 2))
    assert np.array_equal(linear.forward(np.ones((3, 4))), np.full((3, 2), 4.0))


def test_seeded_initialization_is_reproducible():
    assert np.array_equal(Conv2d(3, 4, 3, seed=7).weights, Conv2d(3, 4, 3, seed=7).weights)
    assert not np.array_equal(Conv2d(3, 4, 3, seed=7).weights, Conv2d(3, 4, 3, seed=8).weights)
    assert Linear(5, 2, seed=1, dtype=np.float32).weights.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_and_reference_networks_agree(dtype, rng):
    X = random_array(rng, (3, 2, 7, 8), dtype)
    fast, slow = network(fc, dtype), network(fc.reference, dtype)
    assert_matches(forward(fast, X), forward(slow, X))
    G = random_array(rng, (3, 5), dtype)
    assert_matches(backward(fast, G), backward(slow, G))
    for a, b in zip(fast, slow):
        if hasattr(a, "dweights"):
            assert_matches(a.dweights, b.dweights)
            assert_matches(a.dbiases, b.dbiases)


def test_network_gradient_matches_finite_differences(rng):
    layers = network(fc)
    X = random_array(rng, (2, 2, 7, 8))
    G = random_array(rng, (2, 5))
    forward(layers, X)
    backward(layers, G)
    conv = layers[2]
    numeric = central_difference(lambda: np.vdot(forward(layers, X), G), conv.weights)
    assert relative_error(conv.dweights, numeric) < 1e-6


def test_relu_and_flatten_round_trip(rng):
    X = random_array(rng, (2, 3, 4, 5))
    relu, flatten = ReLU(), Flatten()
    Y = flatten.forward(relu.forward(X))
    assert Y.shape == (2, 60) and np.array_equal(Y, np.maximum(X, 0).reshape(2, -1))
    dX = relu.backward(flatten.backward(np.ones_like(Y)))
    assert np.array_equal(dX, (X > 0).astype(float))


def test_conv2d_layer_rejects_bad_groups():
    message = r"Conv2d: in_channels=3 and out_channels=4 must both be divisible by groups=2"
    with pytest.raises(ValueError, match=message):
        Conv2d(3, 4, 3, groups=2)


def test_example_trains_and_loss_falls():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_cnn.py"), "--epochs", "4", "--samples", "1024",
         "--no-reference"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    losses = [float(v) for v in re.findall(r"loss (\d+\.\d+)", result.stdout)]
    accuracy = [float(v) for v in re.findall(r"test accuracy (\d+\.\d+)", result.stdout)]
    assert len(losses) == 4
    assert losses[-1] < 0.5 * losses[0], losses
    assert accuracy[-1] >= 0.9, accuracy


@pytest.mark.parametrize("parameters", [np.float64, np.float32])
@pytest.mark.parametrize("inputs", [np.float32, np.float64])
def test_layers_compute_in_the_input_dtype(inputs, parameters, rng):
    """float32 in, float32 out whatever the parameters' dtype; the parameter
    gradients come back in the parameters' dtype."""
    layers = network(fc, parameters)
    X = random_array(rng, (3, 2, 7, 8), inputs)
    Y = forward(layers, X)
    assert Y.dtype == inputs
    assert_matches(Y, forward(network(fc.reference, inputs), X), rtol=1e-4)
    dX = backward(layers, random_array(rng, Y.shape, inputs))
    assert dX.dtype == inputs
    for layer in layers:
        if hasattr(layer, "weights"):
            dtypes = {layer.weights.dtype, layer.dweights.dtype, layer.biases.dtype, layer.dbiases.dtype}
            assert dtypes == {np.dtype(parameters)}


def test_integer_input_computes_in_the_parameters_dtype(rng):
    layer = Linear(4, 3, seed=0, dtype=np.float32)
    assert layer.forward(np.arange(8).reshape(2, 4)).dtype == np.float32


@pytest.mark.parametrize("layer", [Conv2d(2, 3, 3), Linear(4, 2), Softmax(), ReLU(), Flatten()],
                         ids=["Conv2d", "Linear", "Softmax", "ReLU", "Flatten"])
def test_backward_before_forward_is_a_clear_error(layer):
    with pytest.raises(RuntimeError, match=rf"{type(layer).__name__}\.backward called before forward"):
        layer.backward(np.ones((1, 2)))
