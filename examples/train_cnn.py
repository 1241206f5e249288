"""Train a small CNN with plain SGD on a synthetic image task, built from
fastconv.layers, and time an epoch against the same network on the einsum
references.

    python examples/train_cnn.py [--epochs 8] [--no-reference]

The task: 12x12 noisy images holding one of four shapes (horizontal bar,
vertical bar, diagonal, square) at a random place; the label is the shape.
"""
import argparse
import sys
import time

import numpy as np

import fastconv
from fastconv.layers import Conv2d, Flatten, Linear, ReLU, Softmax

SIZE, CLASSES = 12, 4


def make_dataset(n, rng, dtype=np.float32):
    """Images (n, 1, 12, 12) with a shape per class, plus noise; labels (n,)."""
    images = rng.normal(0.0, 0.3, (n, 1, SIZE, SIZE))
    labels = rng.integers(0, CLASSES, n)
    for image, label in zip(images[:, 0], labels):
        r, c = rng.integers(1, SIZE - 5, 2)
        if label == 0:
            image[r + 2, c:c + 5] += 1.5
        elif label == 1:
            image[r:r + 5, c + 2] += 1.5
        elif label == 2:
            image[r + np.arange(5), c + np.arange(5)] += 1.5
        else:
            image[r:r + 4, c:c + 4] += 1.0
    return images.astype(dtype), labels


def make_network(ops, seed=0, dtype=np.float32):
    return [
        Conv2d(1, 8, 3, padding=1, seed=seed, dtype=dtype, ops=ops), ReLU(),
        Conv2d(8, 16, 3, stride=2, padding=1, seed=seed + 1, dtype=dtype, ops=ops), ReLU(),
        Flatten(),
        Linear(16 * 6 * 6, CLASSES, seed=seed + 2, dtype=dtype, ops=ops),
        Softmax(ops=ops),
    ]


def train_epoch(network, images, labels, rng, lr=0.05, batch=32, progress=None):
    """One epoch of SGD on the cross-entropy loss; returns the mean loss."""
    order = rng.permutation(len(images))
    losses = []
    for step, start in enumerate(range(0, len(images), batch)):
        index = order[start:start + batch]
        X, y = images[index], labels[index]
        for layer in network:
            X = layer.forward(X)
        probabilities = np.clip(X[np.arange(len(y)), y], 1e-12, None)
        losses.append(-np.log(probabilities).mean())
        grad = np.zeros_like(X)
        grad[np.arange(len(y)), y] = -1.0 / (probabilities * len(y))
        for layer in reversed(network):
            grad = layer.backward(grad)
        for layer in network:
            if hasattr(layer, "dweights"):
                layer.weights -= lr * layer.dweights
                layer.biases -= lr * layer.dbiases
        if progress:
            progress(step + 1, -(-len(images) // batch))
    return float(np.mean(losses))


def accuracy(network, images, labels):
    X = images
    for layer in network:
        X = layer.forward(X)
    return float((X.argmax(axis=1) == labels).mean())


def progress_bar(label):
    def show(done, total):
        filled = 30 * done // total
        print(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}", end="",
              file=sys.stderr, flush=True)
    return show


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the epoch timed on fastconv.reference")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    train, test = make_dataset(args.samples, rng), make_dataset(512, rng)
    network = make_network(fastconv)
    train_epoch(make_network(fastconv), train[0][:64], train[1][:64], rng)  # compile/load kernels
    print(f"before training: test accuracy {accuracy(network, *test):.2f}")
    times = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        loss = train_epoch(network, *train, rng, progress=progress_bar(f"epoch {epoch:2d}"))
        times.append(time.perf_counter() - start)
        print(f"\repoch {epoch:2d}: loss {loss:.4f}  test accuracy {accuracy(network, *test):.2f}  "
              f"({times[-1]:.2f} s)")
    fast = float(np.median(times))
    print(f"fastconv: {fast:.3f} s per epoch (median of {len(times)})")
    if not args.no_reference:
        reference_net = make_network(fastconv.reference)
        start = time.perf_counter()
        train_epoch(reference_net, *train, rng, progress=progress_bar("reference"))
        slow = time.perf_counter() - start
        print(f"\rfastconv.reference: {slow:.3f} s per epoch -> fastconv is {slow / fast:.1f}x faster")


if __name__ == "__main__":
    main()
