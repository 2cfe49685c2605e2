"""Test helper, run by tests/test_triton.py in a subprocess with `TRITON_INTERPRET=1`:

    python triton_interpret_worker.py CASES.pt RESULTS.pt

CASES.pt: a list of dicts (name, xs, a, b, gy as float64 tensors; order; dtype; needs =
which of (dX, dA, dB) to compute; compiled: through `torch.compile(backend="aot_eager")`;
func: the gradients by `torch.func.grad`, all three needed).
For each case the inputs are cast to dtype and run through the operator with `triton=True`
(`hmfusion.ops.native.fused_kron_concat`), forward and autograd backward, on CPU tensors in
Triton's interpreter. RESULTS.pt: per case name, Y and the
gradients (float64), and how many times the Triton launchers ran (forward, backward), so that
the test can tell the kernels from the fallback.
"""

from __future__ import annotations

import os
import sys

import torch

from hmfusion.ops import native
from hmfusion.ops import triton_kernels


def main(cases_path: str, results_path: str) -> None:
    if os.environ.get("TRITON_INTERPRET") != "1" or not triton_kernels.interpreted():
        raise SystemExit("run with TRITON_INTERPRET=1: the kernels must run in the interpreter")
    calls = {"forward": 0, "backward": 0}
    forward, backward = triton_kernels.forward, triton_kernels.backward

    def counted_forward(*args, **kwargs):
        calls["forward"] += 1
        return forward(*args, **kwargs)

    def counted_backward(*args, **kwargs):
        calls["backward"] += 1
        return backward(*args, **kwargs)

    triton_kernels.forward = counted_forward
    triton_kernels.backward = counted_backward
    results = {}
    for case in torch.load(cases_path):
        calls.update(forward=0, backward=0)
        dtype = case["dtype"]
        need_x, need_a, need_b = case["needs"]
        xs = [x.to(dtype).requires_grad_(need_x) for x in case["xs"]]
        a = case["a"].to(dtype).requires_grad_(need_a)
        b = case["b"].to(dtype).requires_grad_(need_b)
        rows = max(xs[0].shape[0], 1)

        def apply(xs, a, b, order=case["order"], rows=rows):
            return native.fused_kron_concat(xs, a, b, order, rows, triton=True)

        if case.get("compiled"):  # the registered ops under torch.compile (no Inductor)
            apply = torch.compile(apply, backend="aot_eager", fullgraph=True)
        y = apply(xs, a, b)
        gy = case["gy"].to(dtype)
        if case.get("func"):  # torch.func.grad: the operator's forward again, then backward

            def loss(xs, a, b, apply=apply, gy=gy):
                return (apply(xs, a, b) * gy).sum()

            dxs, da, db = torch.func.grad(loss, (0, 1, 2))(
                [x.detach() for x in xs], a.detach(), b.detach()
            )
            grads = [*dxs, da, db]
        else:
            wanted = [*(xs if need_x else []), *([a] if need_a else []), *([b] if need_b else [])]
            grads = list(torch.autograd.grad(y, wanted, gy))
        results[case["name"]] = {
            "y": y.detach().double(),
            "dxs": [grads.pop(0).double() for _ in xs] if need_x else None,
            "da": grads.pop(0).double() if need_a else None,
            "db": grads.pop(0).double() if need_b else None,
            "calls": (calls["forward"], calls["backward"]),
        }
    torch.save(results, results_path)


#: Exit status when this Triton's interpreter cannot run the kernels at all.
UNSUPPORTED = 3

if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2])
    except Exception as error:
        # Triton 3.6's interpreter with NumPy 2 takes no loop bound passed as an argument
        # (`int()` of a one-element array); 3.9's does. Any other error is a failure.
        if "only 0-dimensional arrays can be converted" not in repr(error):
            raise
        import numpy
        import triton

        print(
            f"Triton {triton.__version__}'s interpreter cannot loop over a kernel argument "
            f"with NumPy {numpy.__version__} (Triton 3.9's can)",
            file=sys.stderr,
        )
        sys.exit(UNSUPPORTED)
