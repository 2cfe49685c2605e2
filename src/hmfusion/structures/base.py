"""The contract of a structure: its factors, the flat vector w, and the initialisation variance.

The math and its conventions are documented once, in [`hmfusion.structures`][hmfusion.structures].
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["FactorSpec", "FlatPiece", "Structure", "linear_weight_variance"]

Factors = Mapping[str, Tensor]


def linear_weight_variance(D: int) -> float:
    """Variance of `nn.Linear`'s default weight for fan-in D: U(-1/√D, 1/√D) has 1/(3D).

    Args:
        D: the fan-in (input width), a positive int (not checked).

    Returns:
        1/(3D).

    Example:
        >>> linear_weight_variance(4) == 1 / 12
        True
    """
    return 1.0 / (3.0 * D)


def _uniform_(tensor: Tensor, variance: float, generator: torch.Generator | None) -> None:
    """Fill with U(-b, b) of the given variance (b = √(3·variance))."""
    bound = math.sqrt(3.0 * variance)
    tensor.uniform_(-bound, bound, generator=generator)


@dataclass(frozen=True)
class FactorSpec:
    """One factor of a structure: its attribute name, shape and whether it is trained.

    Trained factors become `nn.Parameter`s of the fusion module; fixed ones (the random
    matrices) become persistent buffers, saved in the `state_dict`.

    Attributes:
        name: the attribute name on the module (`"A"`, `"U"`, `"R1"`, …).
        shape: the factor's shape.
        trainable: whether the factor is trained (counted in l) or fixed.
    """

    name: str
    shape: tuple[int, ...]
    trainable: bool = True


@dataclass(frozen=True)
class FlatPiece:
    """One piece of the flat vector w: `factor[index]` (or the whole factor), maybe transposed."""

    name: str
    index: int | None = None
    transposed: bool = False


class Structure(ABC):
    """The structure ψ of an n×D fusion weight W = ψ(w).

    A structure is a plain description (sizes and block sizes); the factor tensors belong to the
    module and are passed in as a mapping `{name: tensor}` following `factor_specs`.
    """

    n: int
    D: int

    @property
    @abstractmethod
    def factor_specs(self) -> tuple[FactorSpec, ...]:
        """The factors, in the order of the flat vector w."""

    @property
    @abstractmethod
    def flat_layout(self) -> tuple[FlatPiece, ...]:
        """How w is cut into factors (tinybig 0.2.1's flat layout, each piece row-major)."""

    @property
    def num_parameters(self) -> int:
        """l: the number of trained values (the length of w)."""
        return sum(math.prod(spec.shape) for spec in self.factor_specs if spec.trainable)

    @abstractmethod
    def materialize(self, f: Factors) -> Tensor:
        """The n×D weight W. For inspection, export and tests; the forward never calls it (the
        planner's `materialize` plan forms a Kronecker W in its own kernel).

        Args:
            f: the factor tensors by name, as `factor_specs` lists them.

        Returns:
            W, of shape (n, D), differentiable in the factors.
        """

    @abstractmethod
    def apply_transposed(self, x: Tensor, f: Factors) -> Tensor:
        """`x Wᵀ` for x of shape (m, D); returns (m, n).

        Args:
            x: the rows, shape (m, D), in the factors' dtype and device (not checked).
            f: the factor tensors by name, as `factor_specs` lists them.
        """

    def apply_concat(self, xs: Sequence[Tensor], f: Factors) -> Tensor:
        """`cat(xs, -1) Wᵀ` for xs of shapes (m, n_i); returns (m, n).

        Args:
            xs: the inputs, shapes (m, n_i) with Σ n_i = D (not checked: the fusion module
                validates them).
            f: the factor tensors by name, as `factor_specs` lists them.
        """
        return self.apply_transposed(torch.cat(list(xs), dim=-1) if len(xs) > 1 else xs[0], f)

    @abstractmethod
    def init_factors_(self, f: Factors, generator: torch.Generator | None = None) -> None:
        """Initialise the factors in place (W gets variance 1/(3D), as `nn.Linear`'s weight).

        Args:
            f: the factor tensors by name; the trained ones are overwritten.
            generator: the random generator to draw from (default: torch's global one).
        """

    def fit(self, weight: Tensor) -> dict[str, Tensor]:
        """Factors whose W is closest to `weight` (n×D) in Frobenius norm.

        Args:
            weight: a floating tensor of shape (n, D).

        Returns:
            The factor tensors by name (the trained ones; fixed factors keep their values).

        Raises:
            TypeError: the structure cannot be fitted (the random-matrix structure).
        """
        raise TypeError(f"{type(self).__name__} cannot be fitted to a dense weight")

    @abstractmethod
    def describe(self) -> str:
        """The structure's hyper-parameters, for `extra_repr`."""

    # flat vector <-> factors (shared by every member) ------------------------------------
    def to_flat(self, f: Factors) -> Tensor:
        """w: the trained factors cut and flattened per `flat_layout`, concatenated.

        Args:
            f: the factor tensors by name.

        Returns:
            w, of shape (l,).
        """
        pieces = []
        for piece in self.flat_layout:
            value = f[piece.name] if piece.index is None else f[piece.name][piece.index]
            pieces.append((value.transpose(0, 1) if piece.transposed else value).reshape(-1))
        return torch.cat(pieces)

    def from_flat(self, w: Tensor) -> dict[str, Tensor]:
        """The trained factors held in w, as views of w (differentiable in w).

        Args:
            w: the flat vector, shape (l,) (its length is not checked here).

        Returns:
            The trained factor tensors by name.
        """
        shapes = {spec.name: spec.shape for spec in self.factor_specs}
        pieces: dict[str, list[Tensor]] = {}
        offset = 0
        for piece in self.flat_layout:
            shape = shapes[piece.name][1:] if piece.index is not None else shapes[piece.name]
            stored = shape[::-1] if piece.transposed else shape
            size = math.prod(stored)
            value = w[offset : offset + size].reshape(stored)
            pieces.setdefault(piece.name, []).append(
                value.transpose(0, 1) if piece.transposed else value
            )
            offset += size
        return {
            name: torch.stack(values) if len(values) > 1 else values[0]
            for name, values in pieces.items()
        }
