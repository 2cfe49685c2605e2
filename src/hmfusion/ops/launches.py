"""What a call costs on an accelerator: the operators it dispatches, and the Triton kernels'
launches and padded tiles.

Up to m = D = 4096 the H200 run was launch-bound (dense forward+backward ≈ 0.5–0.7 ms at every
size), so the cost model ([`hmfusion.ops.costmodel`][hmfusion.ops.costmodel]) charges each
method on an accelerator its work at `DEVICE_SPEEDUP` times the CPU's rate plus its operators
at `DEVICE_OP_MACS` each; the measuring planner times the best candidates there as on a CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hmfusion.ops.costmodel import KronSpec, Method, Order

__all__ = ["device_ops", "triton_ops", "triton_row_macs"]

#: Accelerators: how much faster than the benchmark CPU work runs (H200, float32: ≈ 25
#: TMAC/s), and the host time of one dispatched operator (≈ 15 µs).
DEVICE_SPEEDUP = 250.0
DEVICE_OP_MACS = 1.35e6


def device_ops(method: Method, k: int, terms: int, chunks: int, grad: bool) -> int:
    """Operators dispatched by one call of `method` on k inputs, `terms` Kronecker terms and
    `chunks` row chunks (fused plans), forward (+ backward with `grad`): counted with a
    `TorchDispatchMode` on the pure-PyTorch paths, views included.

    Example:
        >>> from hmfusion.ops.launches import device_ops
        >>> device_ops("composite", 4, 1, 1, True)
        64
    """
    if method == "materialize":
        return (49 + 5 * k if grad else 15 + k) + 4 * (terms - 1)
    if method == "composite":
        return terms * (44 + 5 * k if grad else 17 + k)
    first = 59 + 5 * k if grad else 17 + k
    return terms * (first + (chunks - 1) * (12 * k if grad else 4 * k))


#: Host time of one Triton launch (argument binding and specialisation in Python), in
#: dispatched ATen operators: a guess until measured on a GPU (issue 20).
TRITON_LAUNCH_OPS = 2
#: The Triton kernels' tiles: edges of 16 (the least `tl.dot` takes) to 64, powers of two.
TRITON_MIN_BLOCK, TRITON_MAX_BLOCK = 16, 64


def triton_ops(k: int, grad: bool) -> int:
    """Host-side cost of one call of the Triton kernels (`hmfusion.ops.triton_kernels`), in
    dispatched operators: forward one launch (`TRITON_LAUNCH_OPS`) and Y's allocation;
    backward three launches (dX; dA and dB's partial sums; their sum) and the allocations of
    dX, dA, dB and the workspace; for k > 1 inputs the forward's `torch.cat`, the backward's
    `torch.cat` and dX's buffer and split.

    Args:
        k: the number of inputs.
        grad: whether a backward follows.

    Returns:
        The operator count.

    Example:
        >>> from hmfusion.ops.launches import triton_ops
        >>> triton_ops(1, False), triton_ops(4, True)
        (3, 20)
    """
    forward = 1 + TRITON_LAUNCH_OPS + (1 if k > 1 else 0)
    if not grad:
        return forward
    return forward + 3 + k + 3 * TRITON_LAUNCH_OPS + (3 if k > 1 else 0)


def _triton_block(size: int) -> int:
    block = TRITON_MIN_BLOCK
    while block < min(size, TRITON_MAX_BLOCK):
        block *= 2
    return block


def triton_row_macs(spec: KronSpec, order: Order, grad: bool) -> float:
    """Multiply-adds per row of the Triton kernels on their padded tiles: the forward's first
    product is recomputed for every tile of the second's rows (p / BP of them right first,
    s / BS left first); with grad ≈ 4× that (dX, dA and dB are chained products of the same
    size)."""
    dims = []
    for size in (spec.p, spec.q, spec.s, spec.t):
        block = _triton_block(size)
        dims.append((-(-size // block) * block, -(-size // block)))
    (p, p_tiles), (q, _), (s, s_tiles), (t, _) = dims
    if order == "right_first":
        forward = p_tiles * q * t * s + p * q * s
    else:
        forward = s_tiles * p * q * t + p * t * s
    return spec.terms * forward * (4 if grad else 1)
