"""tinybig 0.2.1's own W for HM, LPHM and dual-LPHM (`layout="tinybig-0.2.1"`).

tinybig 0.2.1 does not compute the Kronecker product its documentation describes: it takes the
outer product of the *flattened* factors and reshapes it row-major to n×D,

    W[i, j] = a[(i·D + j) div (s·t)] · b[(i·D + j) mod (s·t)],   a = vec(A), b = vec(B),

i.e. vec(W) = a ⊗ b (B = S Tᵀ for LPHM; also A = P Qᵀ for dual-LPHM). That equals A ⊗ B only
when s = 1 or q = 1. [`TinybigLegacyKronecker`][hmfusion.compat.tinybig.TinybigLegacyKronecker]
reproduces it exactly so that a model trained with tinybig keeps its outputs; it materializes W and
applies it with `F.linear`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmfusion import _validation as V

__all__ = ["TinybigLegacyKronecker"]


class TinybigLegacyKronecker(nn.Module):
    """tinybig 0.2.1's fabrication of the Kronecker family: vec(W) = vec(A) ⊗ vec(B).

    The factors are parameters named and shaped as the pieces of tinybig's flat vector w, in
    its order: HM `A (p×q), B (s×t)`; LPHM `A (p×q), S (s×r), T (r×t)` (T holds Tᵀ);
    dual-LPHM `P (p×r), Q (r×q), S (s×r), T (r×t)` (Q holds Qᵀ), with s = n/p, t = D/q.

    Args:
        dims: the input widths (D = Σ dims).
        n: the output width.
        p: rows of A; must divide n.
        q: columns of A; must divide D; defaults to p.
        r: rank of B = S Tᵀ (LPHM, dual-LPHM); `None` for HM.
        dual: A = P Qᵀ of rank r too (dual-LPHM).
        device: where the parameters are created.
        dtype: the parameters' floating dtype.

    Raises:
        TypeError: p, q or r is not a positive int.
        ValueError: p does not divide n or q does not divide D (the valid choices listed).

    Shape:
        - Input of `forward`: k tensors `(*, dims[i])`; Output: `(*, n)`.

    Example:
        >>> m = TinybigLegacyKronecker([4], 4, p=2, q=2)
        >>> m.weight.shape, m.num_parameters
        (torch.Size([4, 4]), 8)
    """

    def __init__(
        self,
        dims: Sequence[int],
        n: int,
        p: int,
        q: int | None = None,
        r: int | None = None,
        *,
        dual: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dims = V.check_dims(dims)
        self.n, self.D = V.check_positive_int("n", n), sum(self.dims)
        self.p = V.check_positive_int("p", p)
        q_name = "q" if q is not None else "q (defaulting to p)"
        self.q = V.check_positive_int(q_name, self.p if q is None else q)
        self.r = None if r is None else V.check_positive_int("r", r)
        V.check_divides("p", self.p, "n", self.n)
        V.check_divides(q_name, self.q, "D", self.D)
        s, t = self.n // self.p, self.D // self.q
        if self.r is None:
            pieces = {"A": (self.p, self.q), "B": (s, t)}
        elif not dual:
            pieces = {"A": (self.p, self.q), "S": (s, self.r), "T": (self.r, t)}
        else:
            pieces = {
                "P": (self.p, self.r),
                "Q": (self.r, self.q),
                "S": (s, self.r),
                "T": (self.r, t),
            }
        self.pieces = pieces
        dtype = V.check_factory_dtype(dtype)
        for name, shape in pieces.items():
            tensor = torch.empty(shape, device=device, dtype=dtype)
            self.register_parameter(name, nn.Parameter(tensor))
        self.reset_parameters()

    @property
    def pad(self) -> bool:
        """Always `False`: tinybig requires p | n and q | D."""
        return False

    @property
    def num_parameters(self) -> int:
        """l, the length of the flat vector w."""
        return sum(math.prod(shape) for shape in self.pieces.values())

    def factors(self) -> dict[str, Tensor]:
        """The factor parameters by name, in tinybig's flat order."""
        return {name: getattr(self, name) for name in self.pieces}

    def factors_from_flat(self, w: Tensor) -> dict[str, Tensor]:
        """The factors held in w, as views of w (differentiable in w).

        Args:
            w: the flat vector, shape (l,), in tinybig 0.2.1's layout (not checked here).

        Returns:
            The factor tensors by name.
        """
        sizes = [math.prod(shape) for shape in self.pieces.values()]
        return {
            name: piece.reshape(shape)
            for (name, shape), piece in zip(self.pieces.items(), w.split(sizes), strict=True)
        }

    def materialize(self, f: dict[str, Tensor]) -> Tensor:
        """tinybig's W (n×D) from the factors: outer(vec(A), vec(B)) reshaped row-major."""
        a = f["P"] @ f["Q"] if "P" in f else f["A"]
        b = f["S"] @ f["T"] if "S" in f else f["B"]
        return torch.outer(a.reshape(-1), b.reshape(-1)).reshape(self.n, self.D)

    @property
    def weight(self) -> Tensor:
        """The materialized W (n×D) of the module's own factors."""
        return self.materialize(self.factors())

    def to_linear(self) -> nn.Linear:
        """An `nn.Linear(D, n, bias=False)` holding tinybig's W of the module's own factors.

        The route to a true Kronecker product: fit one to this weight and fine-tune, e.g.
        `HMConcatFusion.from_linear(m.to_linear(), dims, p=…, terms=…)`.

        Example:
            >>> m = TinybigLegacyKronecker([4], 4, p=2)
            >>> torch.equal(m.to_linear().weight, m.weight)
            True
        """
        factor = next(iter(self.factors().values()))
        linear = nn.Linear(self.D, self.n, bias=False, device=factor.device, dtype=factor.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight)
        return linear

    def flat_parameters(self) -> Tensor:
        """w, shape (l,): the factors flattened in tinybig's order (differentiable)."""
        return torch.cat([value.reshape(-1) for value in self.factors().values()])

    def load_flat_parameters(self, w: Tensor) -> None:
        """Set the factors from w of shape (l,) or (1, l).

        Args:
            w: the flat vector, in tinybig 0.2.1's layout.

        Raises:
            TypeError: w is not a floating tensor.
            ValueError: w does not hold exactly l values.
        """
        flat = V.check_flat_vector(w, self.num_parameters)
        with torch.no_grad():
            for name, value in self.factors_from_flat(flat).items():
                getattr(self, name).copy_(value)

    def reset_parameters(self) -> None:
        """Initialise every factor uniformly so that W has `nn.Linear`'s variance 1/(3D).

        Var(W) = r^c · v^f for f factors of variance v and c low-rank products of rank r.
        """
        products = ("S" in self.pieces) + ("P" in self.pieces)
        variance = (1.0 / (3 * self.D) / (self.r or 1) ** products) ** (1 / len(self.pieces))
        bound = math.sqrt(3 * variance)
        with torch.no_grad():
            for value in self.factors().values():
                value.uniform_(-bound, bound)

    def _fuse(
        self, inputs: Sequence[Tensor], lead: tuple[int, ...], factors: dict[str, Tensor]
    ) -> Tensor:
        """`cat(inputs) Wᵀ` on inputs already checked (their common `lead` shape)."""
        rows = torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs], dim=-1)
        return F.linear(rows, self.materialize(factors)).reshape(*lead, self.n)

    def extra_repr(self) -> str:
        rank = "" if self.r is None else f", r={self.r}"
        return (
            f"dims={list(self.dims)}, n={self.n}, p={self.p}, q={self.q}{rank}, "
            f"layout='tinybig-0.2.1'"
        )
