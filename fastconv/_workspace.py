"""Scratch memory for the kernels, one bounded buffer reused across calls.

A fresh multi-megabyte buffer costs more in page faults than the transform that
fills it (measured: a (1, 64, 56, 56) Winograd convolution took 1.2 ms with
fresh scratch and 0.65 ms with reused scratch). Each dtype keeps one buffer of
at most :data:`LIMIT` bytes between calls; a call that needs more, or that runs
while another thread holds the buffer, gets memory of its own, freed when it
returns.
"""
import functools
import math
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

#: Bytes of scratch kept between calls, per dtype.
LIMIT = 32 << 20


def core_cache_bytes(default=1 << 20):
    """Bytes of a core's level-2 cache as Linux reports it, else ``default``."""
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip()
                return int(size[:-1]) << {"K": 10, "M": 20}[size[-1]]
        except (OSError, ValueError, KeyError, IndexError):
            pass
    return default


#: Bytes of im2col columns and GEMM results per chunk of images: a chunk stays
#: in its core's L2 between the column kernel and the GEMM (measured against 8-16
#: MB chunks: strided 3x3 and 5x5 layers 1.1-1.3x faster on a 512 KB L2, a 3x3
#: stride-2 (8, 64, 56, 56) layer 1.16x faster on a 1 MB L2).
CHUNK_BYTES = core_cache_bytes()

_lock = threading.Lock()
_kept = {}


#: Fewest GEMM rows (output pixels) per chunk: every chunk's GEMM packs the whole
#: weight again, so small planes take several images at once (a 3x3 stride-2 layer
#: of 512 channels on 14x14 images ran 1.6x slower with one 49-pixel image a chunk).
MIN_CHUNK_PIXELS = 256


def images_per_chunk(n, per_image, pixels, parts=1):
    """Images per chunk of ``n`` (each ``per_image`` bytes of columns and results,
    ``pixels`` output pixels): as many as fit :data:`CHUNK_BYTES`, but at least
    :data:`MIN_CHUNK_PIXELS` pixels' worth, at most an even share of ``parts``
    threads."""
    least = -(-MIN_CHUNK_PIXELS // max(pixels, 1))
    return max(1, min(-(-n // parts), max(least, CHUNK_BYTES // max(per_image, 1))))


@functools.lru_cache(maxsize=64)
def blocks(n, rows, width, per_item, budget, least, parts):
    """Split ``n`` images of ``rows`` rows of ``width`` items (output pixels,
    or Winograd tiles) into blocks of about ``budget`` bytes (``per_item`` bytes
    an item, at least ``least`` items) for ``parts`` threads.

    Thread t takes the rows ``[t*R//parts, (t+1)*R//parts)`` of all the images'
    R = n*rows rows, so the threads' shares differ by at most one row (3 images
    on 2 threads: 1.5 images each, not 1 and 2). A share is split into groups of
    whole images where one fits, the groups differing by at most one image, and
    bands of rows of one image (its first and last partial image, or an image
    too large for one block), the bands differing by at most one row.

    Returns the largest block in items, the blocks as a (B, 4) int64 array of
    (first image, images, first row, rows), and the first block of each thread
    as a (parts + 1,) int64 array (thread t runs blocks ``starts[t]`` to
    ``starts[t + 1]``); the same arrays for the same arguments (not to be
    written to)."""
    fit = max(width, least, budget // per_item)
    images_fit, rows_fit = fit // (rows * width), fit // width
    found, starts, total = [], [0], n * rows
    for t in range(parts):
        row, stop = t * total // parts, (t + 1) * total // parts
        while row < stop:
            image, first = divmod(row, rows)
            whole = (stop - row) // rows if first == 0 and images_fit else 0
            if whole:
                groups = -(-whole // images_fit)
                found += [(image + j * whole // groups, (j + 1) * whole // groups - j * whole // groups,
                           0, rows) for j in range(groups)]
                row += whole * rows
                continue
            count = min(rows - first, stop - row)
            bands = -(-count // rows_fit)
            found += [(image, 1, first + i * count // bands, (i + 1) * count // bands - i * count // bands)
                      for i in range(bands)]
            row += count
        starts.append(len(found))
    found = np.array(found, np.int64).reshape(-1, 4)
    capacity = int((found[:, 1] * found[:, 3]).max() * width) if len(found) else 0
    return capacity, found, np.array(starts, np.int64)


@contextmanager
def scratch(dtype, *shapes):
    """C-contiguous arrays of ``shapes`` (uninitialized) carved from one buffer,
    valid inside the block."""
    dtype = np.dtype(dtype)
    sizes = [math.prod(shape) for shape in shapes]
    total = sum(sizes)
    held = _lock.acquire(blocking=False)
    try:
        buffer = _kept.get(dtype) if held else None
        if buffer is None or buffer.size < total:
            buffer = np.empty(total, dtype)
            if held and buffer.nbytes <= LIMIT:
                _kept[dtype] = buffer
        arrays, start = [], 0
        for shape, size in zip(shapes, sizes):
            arrays.append(buffer[start:start + size].reshape(shape))
            start += size
        yield arrays
    finally:
        if held:
            _lock.release()
