"""How W is applied: the planner, its cost model, the kernels and the compiled operator.

The library's lowest layer; it imports nothing else from hmfusion.

- `planner`: which method, kernel, order and row chunk per shape, dtype and device;
- `execute`: running the plan the planner chose;
- `costmodel`: what each plan costs (the planner's ranking and fallback);
- `tuning`: the measuring planner (times the best candidates where it pays);
- `wisdom`: the measured plans on disk, per machine fingerprint;
- `chunking`: how a fused plan walks the rows (chunk sizes, inputs read in place);
- `launches`: what a call costs on an accelerator (operators dispatched, Triton's tiles);
- `kernels`: factor helpers, forming W (`materialize`), the thin two-matmul code (`composite`);
- `fused`: the fused kernel in pure PyTorch (row chunks, hand-written backward);
- `native`: the operator `hmfusion::fused_kron_concat` (registration, autograd, dispatch);
- `triton_dispatch`, `triton_launch`, `triton_kernels`: its CUDA kernels in Triton (when they
  run; grids and precision; the kernels);
- `build`: building and loading `csrc/` (the compiled CPU kernels) on first use.

Users reach the planner's controls through [`hmfusion.planner`][hmfusion.planner].
"""
