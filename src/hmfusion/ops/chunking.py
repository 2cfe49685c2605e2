"""How a fused plan walks the rows: rows per chunk for each kernel, and whether the
pure-PyTorch kernel reads the inputs in place.

Chunks keep a kernel's intermediates in cache and give the threads work to balance; the sizes
were measured on the benchmark CPUs (benchmarks/RESULTS.md). The planner
([`hmfusion.ops.planner`][hmfusion.ops.planner]) sizes each plan's chunk here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from hmfusion.ops import kernels

if TYPE_CHECKING:
    from hmfusion.ops.costmodel import KronSpec

__all__ = ["chunk_rows", "native_chunk_rows", "split_pays", "tiled_chunk_rows"]

#: Row chunks of the pure-PyTorch fused kernel on CPU (intermediates stay in L2/L3; best among
#: 1–8 MiB), one chunk up to SINGLE_CHUNK_BYTES; on accelerators chunks only bound scratch.
CHUNK_BYTES_CPU = 4 << 20
SINGLE_CHUNK_BYTES = 1 << 20
CHUNK_BYTES_DEVICE = 256 << 20
#: The compiled kernel's chunks: ≈ 1 MiB of input rows, at least NATIVE_CHUNKS_PER_THREAD per
#: thread (of ≥ NATIVE_MIN_CHUNK_ROWS rows) for the dynamic schedule, one chunk up to
#: NATIVE_SINGLE_CHUNK_BYTES (benchmarks/RESULTS.md).
CHUNK_BYTES_NATIVE = 1 << 20
NATIVE_CHUNKS_PER_THREAD = 8
NATIVE_MIN_CHUNK_ROWS = 16
NATIVE_SINGLE_CHUNK_BYTES = 256 << 10
#: Split inputs only when each covers at least this many blocks of A's columns.
SPLIT_MIN_BLOCKS = 64
#: The tiled loops' chunks: ≈ 64 KiB of staged rows (16 to 128), one chunk (no parallel
#: region) below TILED_SINGLE_CHUNK_BYTES.
TILED_CHUNK_BYTES = 64 << 10
TILED_SINGLE_CHUNK_BYTES = 224 << 10


def native_chunk_rows(spec: KronSpec, m: int, itemsize: int) -> int:
    """Rows per chunk of the compiled BLAS kernel (see `CHUNK_BYTES_NATIVE`).

    Args:
        spec: the structure of W.
        m: rows of the batch.
        itemsize: bytes per element of the computation's dtype.

    Returns:
        The rows per chunk (m for a single chunk).

    Example:
        >>> from hmfusion.ops.costmodel import KronSpec
        >>> from hmfusion.ops.chunking import native_chunk_rows
        >>> native_chunk_rows(KronSpec(64, 64, 8, 8, 8, 8), 128, 4)
        128
    """
    row_bytes = max(spec.q * spec.t, spec.p * spec.s) * itemsize
    if m * row_bytes <= NATIVE_SINGLE_CHUNK_BYTES:
        return max(m, 1)
    rows = max(1, CHUNK_BYTES_NATIVE // row_bytes)
    balanced = -(-m // (NATIVE_CHUNKS_PER_THREAD * torch.get_num_threads()))
    return max(1, min(m, max(min(rows, balanced), NATIVE_MIN_CHUNK_ROWS)))


def tiled_chunk_rows(spec: KronSpec, m: int, itemsize: int) -> int:
    """Rows per chunk of the register-tiled loops (see `TILED_CHUNK_BYTES`).

    Args:
        spec: the structure of W.
        m: rows of the batch.
        itemsize: bytes per element of the computation's dtype.

    Returns:
        The rows per chunk (m for a single chunk).

    Example:
        >>> from hmfusion.ops.costmodel import KronSpec
        >>> from hmfusion.ops.chunking import tiled_chunk_rows
        >>> tiled_chunk_rows(KronSpec(1024, 1024, 32, 32, 32, 32), 4096, 4)
        16
    """
    # (sized in the loops' float32 or float64 staging buffers, whatever the inputs' dtype)
    row_bytes = max(spec.q * spec.t, spec.p * spec.s) * max(itemsize, 4)
    if m * row_bytes <= TILED_SINGLE_CHUNK_BYTES:
        return max(m, 1)
    rows = min(128, max(16, TILED_CHUNK_BYTES // row_bytes))
    return max(1, min(rows, -(-m // 2)))


def chunk_rows(spec: KronSpec, m: int, itemsize: int, device_type: str) -> int:
    """Rows per chunk of the pure-PyTorch fused kernel.

    On CPU ≈ `CHUNK_BYTES_CPU` of staged input, at least two chunks unless the input is
    small; on accelerators one chunk up to `CHUNK_BYTES_DEVICE`.

    Args:
        spec: the structure of W.
        m: rows of the batch.
        itemsize: bytes per element of the computation's dtype.
        device_type: `"cpu"`, `"cuda"`, …

    Returns:
        The rows per chunk (m for a single chunk).

    Example:
        >>> from hmfusion.ops.costmodel import KronSpec
        >>> from hmfusion.ops.chunking import chunk_rows
        >>> chunk_rows(KronSpec(64, 64, 8, 8, 8, 8), 128, 4, "cuda")
        128
    """
    target = CHUNK_BYTES_CPU if device_type == "cpu" else CHUNK_BYTES_DEVICE
    row_bytes = max(spec.q * spec.t, spec.p * spec.s) * itemsize
    if m * row_bytes <= (SINGLE_CHUNK_BYTES if device_type == "cpu" else CHUNK_BYTES_DEVICE):
        return max(m, 1)
    rows = max(8, target // row_bytes)
    return max(1, min(rows, -(-m // 2)))


def split_pays(spec: KronSpec, dims: tuple[int, ...]) -> bool:
    """Whether the pure-PyTorch fused kernel should read the inputs in place (`"split"`).

    True for one input that needs no padding, or inputs aligned on multiples of t that each
    cover at least `SPLIT_MIN_BLOCKS` of A's columns.

    Args:
        spec: the structure of W.
        dims: the input widths.

    Returns:
        Whether splitting pays.

    Example:
        >>> from hmfusion.ops.costmodel import KronSpec
        >>> from hmfusion.ops.chunking import split_pays
        >>> split_pays(KronSpec(64, 64, 8, 8, 8, 8), (64,))
        True
    """
    blocks = kernels.input_blocks(dims, spec.t)
    if blocks is None:
        return False
    return len(dims) == 1 or min(j1 - j0 for j0, j1 in blocks) >= SPLIT_MIN_BLOCKS
