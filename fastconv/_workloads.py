"""Named workloads, shared by the benchmarks, ``python -m fastconv`` and the
tests, so all three speak of the same shapes. ``seed_*`` are the sizes of the
from-scratch code fastconv replaces (:mod:`fastconv._seeds`); the others are
layers of common networks (``resnet_56_n8``: a ResNet's 56x56 stage at batch 8)."""

#: batch_outer_hadamard: name -> (na, nb, nx, ny)
HADAMARD = {
    "seed_tiny": (2, 3, 50, 60),
    "l3_resident": (20, 30, 50, 60),
    "seed_large": (200, 300, 50, 60),
}

#: conv2d forward: name -> (N, C, H, W, O, K, stride, padding, groups)
CONV2D = {
    "seed_tiny": (4, 4, 5, 5, 10, 3, 1, 1, 1),
    "seed_patch": (64, 64, 3, 3, 8, 3, 1, 0, 1),
    "resnet_56_n1": (1, 64, 56, 56, 64, 3, 1, 1, 1),
    "resnet_56_n8": (8, 64, 56, 56, 64, 3, 1, 1, 1),
    "stem_7x7_s2": (8, 3, 224, 224, 64, 7, 2, 3, 1),
    "resnet_14": (16, 256, 14, 14, 256, 3, 1, 1, 1),
    "pointwise_28": (8, 256, 28, 28, 256, 1, 1, 0, 1),
    "depthwise_112": (1, 32, 112, 112, 32, 3, 1, 1, 32),
}

#: im2col: name -> (N, C, H, W, K, stride, padding)
IM2COL = {
    "seed_tiny": (4, 4, 5, 5, 3, 1, 1),
    "resnet_28_n8": (8, 64, 28, 28, 3, 1, 1),
    "stem_7x7_s2": (8, 3, 224, 224, 7, 2, 3),
}

#: conv2d backward (grad input + weight + bias): name -> (N, C, H, W, O, K, stride, padding)
CONV2D_BACKWARD = {
    "seed_tiny": (4, 4, 5, 5, 10, 3, 1, 1),
    "resnet_56_n1": (1, 64, 56, 56, 64, 3, 1, 1),
    "resnet_28_n8": (8, 64, 28, 28, 64, 3, 1, 1),
    "resnet_14_s2": (16, 128, 14, 14, 128, 3, 2, 1),
    "stem_5x5_s2": (8, 3, 64, 64, 32, 5, 2, 2),
}

#: linear: name -> (N, I, O); softmax: name -> (N, O)
LINEAR = {"seed": (16, 64, 32), "mlp": (256, 1024, 512), "classifier": (4096, 512, 1000)}
SOFTMAX = {"seed": (4, 5), "imagenet_batch": (4096, 1000)}
