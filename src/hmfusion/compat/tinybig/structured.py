"""tinybig 0.2.1's low-rank, HM, LPHM and dual-LPHM fusions over the hmfusion family.

Each keeps tinybig's signature (its own arguments first, then `name, n, dims`) and takes the
shared keyword arguments of
`parameterized_concatenation_fusion`.
The Kronecker classes compute the documented W = A ⊗ B (LPHM: A ⊗ (S Tᵀ), dual-LPHM:
(P Qᵀ) ⊗ (S Tᵀ)) through hmfusion's planner (which forms W only under its `materialize` plan,
for small layers), or tinybig's own W, formed, with `layout="tinybig-0.2.1"`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hmfusion import _validation as V
from hmfusion.compat.tinybig.legacy import TinybigLegacyKronecker
from hmfusion.compat.tinybig.parameterized import (
    KRONECKER,
    TINYBIG_021,
    Family,
    parameterized_concatenation_fusion,
    shared_signature,
    tinybig_size,
)
from hmfusion.fusion import (
    DualLPHMConcatFusion,
    HMConcatFusion,
    LowRankConcatFusion,
    LPHMConcatFusion,
)

__all__ = [
    "dual_lphm_parameterized_concatenation_fusion",
    "hm_parameterized_concatenation_fusion",
    "lowrank_parameterized_concatenation_fusion",
    "lphm_parameterized_concatenation_fusion",
]


_KroneckerFamily = HMConcatFusion | LPHMConcatFusion | DualLPHMConcatFusion | TinybigLegacyKronecker


def _kronecker_family(
    cls: Callable[..., _KroneckerFamily],
    layout: str,
    dims: tuple[int, ...],
    n: int,
    factory: dict,
    *,
    p: int,
    q: int | None,
    pad: bool,
    r: int | None = None,
    dual: bool = False,
) -> _KroneckerFamily:
    """An HM / LPHM / dual-LPHM family module, or its tinybig-0.2.1-layout twin."""
    rank: dict = {} if r is None else {"r": r}
    if layout == KRONECKER:
        return cls(dims, n, p, q, **rank, pad=pad, **factory)
    if pad:
        raise ValueError(
            f"pad=True needs layout={KRONECKER!r}: layout={TINYBIG_021!r} requires p | n and q | D"
        )
    return TinybigLegacyKronecker(dims, n, p, q, r, dual=dual, **factory)


@shared_signature
class lowrank_parameterized_concatenation_fusion(parameterized_concatenation_fusion):
    """tinybig's low-rank fusion: W = U Vᵀ, U: n×r, V: D×r; w = [U (n×r) | Vᵀ (r×D)], l = r·(n+D).

    Args:
        r: the rank (default 2).
        name: returned by `get_name`.
        n: output width, as in
            `parameterized_concatenation_fusion`.
        dims: the input widths, as in
            `parameterized_concatenation_fusion`.
        **kwargs: the shared keyword arguments (`layout`, `dtype`, `own_parameters`, the
            processing functions, `device`, …), as in
            `parameterized_concatenation_fusion`.

    Example:
        >>> lowrank_parameterized_concatenation_fusion(r=1, n=2, dims=[3]).calculate_l()
        5
    """

    _own_arguments = ("r",)

    def __init__(
        self,
        r: int = 2,
        name: str = "lowrank_parameterized_concatenation_fusion",
        n: int | None = None,
        dims: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        self.r = V.check_positive_int("r", tinybig_size(r))
        super().__init__(n, dims, name, **kwargs)

    def _family(self, dims: tuple[int, ...], factory: dict) -> Family:
        return LowRankConcatFusion(dims, self.n, self.r, **factory)


class _KroneckerAdapter(parameterized_concatenation_fusion):
    """The shared part of HM, LPHM and dual-LPHM: p, q, pad, r and the layout switch."""

    _own_arguments: tuple[str, ...] = ("p", "q", "pad")
    _family_class: Callable[..., _KroneckerFamily] = HMConcatFusion
    _dual = False

    def _set_blocks(self, p: int, q: int | None, pad: bool, r: int | None = None) -> None:
        self.p, self.q, self.pad = tinybig_size(p), tinybig_size(q), V.check_bool("pad", pad)
        self.r = tinybig_size(r)

    def _family(self, dims: tuple[int, ...], factory: dict) -> Family:
        family = _kronecker_family(
            self._family_class,
            self.layout,
            dims,
            self.n,
            factory,
            p=self.p,
            q=self.q,
            pad=self.pad,
            r=self.r,
            dual=self._dual,
        )
        self.p, self.q = family.p, family.q  # resolved (q defaults to p)
        return family


@shared_signature
class hm_parameterized_concatenation_fusion(_KroneckerAdapter):
    """tinybig's HM fusion: W = A ⊗ B, A: p×q, B: (n/p)×(D/q); w = [A | B], l = p·q + n·D/(p·q).

    Applied as [`HMConcatFusion`][hmfusion.fusion.HMConcatFusion] applies it (W formed only
    under the planner's `materialize` plan). With `layout="tinybig-0.2.1"`, W is tinybig 0.2.1's
    vec(A) ⊗ vec(B) reshaped to n×D instead.

    Args:
        p: rows of A; must divide n unless `pad`.
        q: columns of A; must divide D unless `pad`; defaults to p.
        name: returned by `get_name`.
        n: output width, as in
            `parameterized_concatenation_fusion`.
        dims: the input widths, as in
            `parameterized_concatenation_fusion`.
        pad: (hmfusion, `layout="kronecker"` only) allow p ∤ n or q ∤ D by zero-padding.
        **kwargs: the shared keyword arguments (`layout`, `dtype`, `own_parameters`, the
            processing functions, `device`, …), as in
            `parameterized_concatenation_fusion`.

    Raises:
        ValueError: p does not divide n or q does not divide D (the message lists the valid
            choices), besides the base class's errors.

    Example:
        >>> hm_parameterized_concatenation_fusion(p=2, n=4, dims=[4]).calculate_l()
        8
    """

    def __init__(
        self,
        p: int,
        q: int | None = None,
        name: str = "hm_parameterized_concatenation_fusion",
        n: int | None = None,
        dims: Sequence[int] | None = None,
        *,
        pad: bool = False,
        **kwargs: Any,
    ) -> None:
        self._set_blocks(p, q, pad)
        super().__init__(n, dims, name, **kwargs)


@shared_signature
class lphm_parameterized_concatenation_fusion(_KroneckerAdapter):
    """tinybig's LPHM fusion: W = A ⊗ (S Tᵀ), A: p×q, S: (n/p)×r, T: (D/q)×r.

    w = [A (p×q) | S (s×r) | Tᵀ (r×t)], l = p·q + r·(s + t).

    Args:
        r: rank of the right factor.
        p: rows of A, as in
            [`hm_parameterized_concatenation_fusion`][hmfusion.compat.tinybig.hm_parameterized_concatenation_fusion].
        q: columns of A, as in
            [`hm_parameterized_concatenation_fusion`][hmfusion.compat.tinybig.hm_parameterized_concatenation_fusion].
        name: returned by `get_name`.
        n: output width, as in
            `parameterized_concatenation_fusion`.
        dims: the input widths, as in
            `parameterized_concatenation_fusion`.
        pad: zero-padding, as in
            [`hm_parameterized_concatenation_fusion`][hmfusion.compat.tinybig.hm_parameterized_concatenation_fusion].
        **kwargs: the shared keyword arguments (`layout`, `dtype`, `own_parameters`, the
            processing functions, `device`, …), as in
            `parameterized_concatenation_fusion`.

    Example:
        >>> lphm_parameterized_concatenation_fusion(1, 2, n=4, dims=[4]).calculate_l()
        8
    """

    _own_arguments = ("r", "p", "q", "pad")
    _family_class = LPHMConcatFusion

    def __init__(
        self,
        r: int,
        p: int,
        q: int | None = None,
        name: str = "lphm_parameterized_concatenation_fusion",
        n: int | None = None,
        dims: Sequence[int] | None = None,
        *,
        pad: bool = False,
        **kwargs: Any,
    ) -> None:
        self._set_blocks(p, q, pad, r)
        super().__init__(n, dims, name, **kwargs)


@shared_signature
class dual_lphm_parameterized_concatenation_fusion(_KroneckerAdapter):
    """tinybig's dual-LPHM fusion: W = (P Qᵀ) ⊗ (S Tᵀ), P: p×r, Q: q×r, S: (n/p)×r, T: (D/q)×r.

    w = [P (p×r) | Qᵀ (r×q) | S (s×r) | Tᵀ (r×t)], l = r·(p + q + s + t).

    Args:
        r: rank of both factors.
        p: rows of A, as in
            [`hm_parameterized_concatenation_fusion`][hmfusion.compat.tinybig.hm_parameterized_concatenation_fusion].
        q: columns of A, as in
            [`hm_parameterized_concatenation_fusion`][hmfusion.compat.tinybig.hm_parameterized_concatenation_fusion].
        name: returned by `get_name`.
        n: output width, as in
            `parameterized_concatenation_fusion`.
        dims: the input widths, as in
            `parameterized_concatenation_fusion`.
        pad: zero-padding, as in
            [`hm_parameterized_concatenation_fusion`][hmfusion.compat.tinybig.hm_parameterized_concatenation_fusion].
        **kwargs: the shared keyword arguments (`layout`, `dtype`, `own_parameters`, the
            processing functions, `device`, …), as in
            `parameterized_concatenation_fusion`.

    Example:
        >>> dual_lphm_parameterized_concatenation_fusion(1, 2, n=4, dims=[4]).calculate_l()
        8
    """

    _own_arguments = ("r", "p", "q", "pad")
    _family_class = DualLPHMConcatFusion
    _dual = True

    def __init__(
        self,
        r: int,
        p: int,
        q: int | None = None,
        name: str = "dual_lphm_parameterized_concatenation_fusion",
        n: int | None = None,
        dims: Sequence[int] | None = None,
        *,
        pad: bool = False,
        **kwargs: Any,
    ) -> None:
        self._set_blocks(p, q, pad, r)
        super().__init__(n, dims, name, **kwargs)
