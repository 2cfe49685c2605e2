"""tinybig 0.2.1's random-matrix adaptation fusion, with seeded matrices saved in the state_dict."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hmfusion import _validation as V
from hmfusion.compat.tinybig.parameterized import (
    Family,
    parameterized_concatenation_fusion,
    shared_signature,
    tinybig_size,
)
from hmfusion.fusion import RandomMatrixConcatFusion

__all__ = ["random_matrix_adaption_parameterized_concatenation_fusion"]


@shared_signature
class random_matrix_adaption_parameterized_concatenation_fusion(parameterized_concatenation_fusion):
    """tinybig's random-matrix adaptation: W = diag(λ₁) R₁ diag(λ₂) R₂ᵀ; w = [λ₁ (n) | λ₂ (r)].

    R₁ (n×r) and R₂ (D×r) are fixed, drawn at construction from `seed` with a private
    generator (the global RNG is untouched) and kept as persistent buffers (saved in the
    `state_dict`: `R1`, `R2`; `fusion.R1`, `fusion.R2` with own parameters). They take
    the module's dtype (`dtype=`, `.double()`): build a float64 module to reproduce a
    float64 tinybig model exactly. l = n + r.

    Args:
        r: inner dimension (default 2).
        name: returned by `get_name`.
        n: output width, as in
            `parameterized_concatenation_fusion`.
        dims: the input widths, as in
            `parameterized_concatenation_fusion`.
        seed: (hmfusion) seed of R₁ and R₂; `None` (default) draws a fresh seed from the
            operating system, so every fusion gets independent matrices; `self.seed` and
            `to_config` hold the seed used.
        **kwargs: the shared keyword arguments (`layout`, `dtype`, `own_parameters`, the
            processing functions, `device`, …), as in
            `parameterized_concatenation_fusion`.

    Example:
        >>> f = random_matrix_adaption_parameterized_concatenation_fusion(r=2, n=3, dims=[4])
        >>> sorted(f.state_dict()), f.calculate_l()
        (['R1', 'R2'], 5)
    """

    _own_arguments = ("r", "seed")

    def __init__(
        self,
        r: int = 2,
        name: str = "random_matrix_adaption_parameterized_concatenation_fusion",
        n: int | None = None,
        dims: Sequence[int] | None = None,
        *,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.r = V.check_positive_int("r", tinybig_size(r))
        self.seed = secrets.randbits(63) if seed is None else V.check_int("seed", seed)
        super().__init__(n, dims, name, **kwargs)

    def _family(self, dims: tuple[int, ...], factory: dict) -> Family:
        return RandomMatrixConcatFusion(dims, self.n, self.r, self.seed, **factory)

    def _attach(self, dtype: torch.dtype | None) -> None:
        super()._attach(dtype)
        if self.fusion is None:  # the matrices are the module's even when w is external
            drawn = self._family(
                tuple(self.get_dims() or ()), {"device": torch.device(self._device), "dtype": dtype}
            )
            self.register_buffer("R1", drawn.get_buffer("R1").detach().clone())
            self.register_buffer("R2", drawn.get_buffer("R2").detach().clone())

    def _fixed_factors(self) -> dict[str, Tensor]:
        holder: nn.Module = self if self.fusion is None else self.fusion
        return {"R1": holder.get_buffer("R1"), "R2": holder.get_buffer("R2")}

    def set_random_matrices(self, R1: Tensor, R2: Tensor) -> None:
        """Set the fixed matrices R₁ (n×r) and R₂ (D×r) (tinybig's `A` and `B`).

        They are copied into the module's buffers, in the module's dtype and device, and saved
        with its `state_dict`; to keep float64 values exactly, build the module with
        `dtype=torch.float64` (or call `.double()`).

        Args:
            R1: the n×r matrix (tinybig's `A`).
            R2: the D×r matrix (tinybig's `B`).

        Raises:
            TypeError: R1 or R2 is not a floating tensor.
            ValueError: a shape is not (n, r) / (D, r).

        Example:
            >>> f = random_matrix_adaption_parameterized_concatenation_fusion(1, n=2, dims=[3])
            >>> f.set_random_matrices(torch.ones(2, 1), torch.ones(3, 1))
        """
        D = sum(self.get_dims() or ())
        for label, value, shape in (("R1", R1, (self.n, self.r)), ("R2", R2, (D, self.r))):
            if not isinstance(value, Tensor) or not value.is_floating_point():
                raise TypeError(f"{label} must be a floating-point torch.Tensor")
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"{label} must have shape {shape} ({'n' if label == 'R1' else 'D'}×r with "
                    f"n={self.n}, D={D}, r={self.r}), got {tuple(value.shape)}"
                )
        fixed = self._fixed_factors()
        with torch.no_grad():
            fixed["R1"].copy_(R1)
            fixed["R2"].copy_(R2)
