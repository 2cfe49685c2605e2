"""Block sizes of the Kronecker members: divisors, the parameter count l, and the `"auto"` search.

Pure functions of integers, in time polynomial in the number of digits of n and D: divisors come
from a factorisation (trial division to 2¹⁶, then Miller–Rabin and Pollard's rho), and the
search never walks every size up to n. Sizes are at most
[`MAX_SIZE`][hmfusion.structures.blocksizes.MAX_SIZE].
"""

from __future__ import annotations

import bisect
import math
import random
from fractions import Fraction
from typing import Literal

import numpy as np

__all__ = [
    "AUTO",
    "MAX_SIZE",
    "PAD_SEARCH_BUDGET",
    "choose_block_sizes",
    "divisors",
    "num_parameters",
]

AUTO: Literal["auto"] = "auto"

#: The largest n or D (2⁴⁸): one row of input or output of a wider layer would take at least
#: 256 TiB, more than any accelerator holds and than the 48-bit virtual address space of
#: x86-64 and ARM64 processors can map.
MAX_SIZE = 2**48

#: With `pad=True` and untied block sizes, the search evaluates at most this many (p, q)
#: candidate pairs (about 0.3 s); a larger search is refused, not truncated.
PAD_SEARCH_BUDGET = 1 << 22

_TRIAL_LIMIT = 1 << 16  # after trial division to 2¹⁶, a cofactor < 2⁴⁸ has ≤ 2 prime factors


def _check_size(value: int) -> None:
    if not 1 <= value <= MAX_SIZE:
        raise ValueError(f"sizes must lie in [1, 2**48], got {value}")


def _is_probable_prime(value: int) -> bool:
    """Miller–Rabin with the first 12 prime bases: exact for value < 3.3·10²⁴."""
    if value < 2:
        return False
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    if value in bases:
        return True
    d, r = value - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in bases:
        x = pow(a, d, value)
        if x in (1, value - 1):
            continue
        for _ in range(r - 1):
            x = x * x % value
            if x == value - 1:
                break
        else:
            return False
    return True


def _pollard_rho(value: int) -> int:
    """A non-trivial factor of the odd composite `value` (Pollard's rho, Floyd cycle finding)."""
    rng = random.Random(value)  # deterministic per value
    while True:
        c = rng.randrange(1, value)
        x = y = rng.randrange(2, value)
        d = 1
        while d == 1:
            x = (x * x + c) % value
            y = (y * y + c) % value
            y = (y * y + c) % value
            d = math.gcd(abs(x - y), value)
        if d != value:
            return d


def _prime_factors(value: int) -> dict[int, int]:
    """{prime: exponent} of `value` (1 ≤ value ≤ MAX_SIZE)."""
    factors: dict[int, int] = {}
    for d in [2, 3] + list(range(5, _TRIAL_LIMIT, 2)):
        if d * d > value:
            break
        while value % d == 0:
            factors[d] = factors.get(d, 0) + 1
            value //= d
    stack = [value] if value > 1 else []
    while stack:
        m = stack.pop()
        if _is_probable_prime(m):
            factors[m] = factors.get(m, 0) + 1
        else:
            d = _pollard_rho(m)
            stack += [d, m // d]
    return factors


def divisors(value: int) -> list[int]:
    """All positive divisors of `value`, ascending.

    Built from the prime factorisation, so the cost grows with the number of digits of
    `value` and its number of divisors (at most 2·10⁴ for `value` ≤ 2⁴⁸), not with √value.

    Args:
        value: an integer in [1, [`MAX_SIZE`][hmfusion.structures.blocksizes.MAX_SIZE]].

    Raises:
        ValueError: `value` is outside [1, [`MAX_SIZE`][hmfusion.structures.blocksizes.MAX_SIZE]].

    Example:
        >>> divisors(12)
        [1, 2, 3, 4, 6, 12]
    """
    _check_size(value)
    result = [1]
    for prime, exponent in _prime_factors(value).items():
        result = [d * prime**e for d in result for e in range(exponent + 1)]
    return sorted(result)


def num_parameters(
    n: int,
    D: int,
    p: int,
    q: int,
    terms: int = 1,
    rank_a: int | None = None,
    rank_b: int | None = None,
) -> int:
    """l of a Kronecker member: `terms·(a + b)` with s = ⌈n/p⌉, t = ⌈D/q⌉ and a = p·q
    (or `rank_a·(p + q)`), b = s·t (or `rank_b·(s + t)`).

    The arguments are not validated (the callers have checked them).

    Args:
        n: output width.
        D: input width.
        p: rows of A.
        q: columns of A.
        terms: the number of Kronecker products summed.
        rank_a: the rank of A = P Qᵀ, or `None` for a dense A.
        rank_b: the rank of B = S Tᵀ, or `None` for a dense B.

    Returns:
        l, the number of trained values.

    Example:
        >>> num_parameters(64, 64, 8, 8)
        128
    """
    s, t = -(-n // p), -(-D // q)
    a = p * q if rank_a is None else rank_a * (p + q)
    b = s * t if rank_b is None else rank_b * (s + t)
    return terms * (a + b)


def _tie_key(n: int, D: int, p: int, q: int) -> tuple[Fraction, Fraction, int]:
    """Among equal l: p close to q, then the two factors' sizes close, then smaller p (ratios
    compared exactly: max/min orders like |log(x/y)| without its rounding)."""
    right = -(-n // p) * -(-D // q)
    return (Fraction(max(p, q), min(p, q)), Fraction(max(p * q, right), min(p * q, right)), p)


def _nearest(values: list[int], target: float) -> list[int]:
    """The elements of the ascending `values` just below and just above `target`."""
    i = bisect.bisect_left(values, target)
    return values[max(i - 1, 0) : i + 1]


def _real_best_q(n: int, D: int, p: int, rank_a: int | None, rank_b: int | None) -> float:
    """The real q minimising l for this p when q | D: l(q) = a·q + b·D/q (+ constants), with
    a = p (dense A) or rank_a, b = n/p (dense B) or rank_b; strictly convex in q."""
    a = p if rank_a is None else rank_a
    b = n / p if rank_b is None else rank_b
    return math.sqrt(b * D / a)


def _padded_range(size: int, cap: int) -> tuple[int, int]:
    """How many candidates `_padded_candidates` returns at most: (small, large)."""
    root = math.isqrt(size) + 1
    return min(root, cap), max(0, root - max(1, size // cap) + 1)


def _padded_candidates(size: int, cap: int) -> np.ndarray:
    """Block sizes c ≤ cap that are the smallest with their ⌈size/c⌉ (a superset: every c ≤
    √size, and ⌈size/k⌉ for k ≤ √size). A larger c with the same ⌈size/c⌉ only enlarges A."""
    root = math.isqrt(size) + 1
    small = np.arange(1, min(root, cap) + 1, dtype=np.float64)
    large = np.ceil(size / np.arange(max(1, size // cap), root + 1, dtype=np.float64))
    return np.unique(np.concatenate([small, large[large <= cap]]))


def _l_float(
    n: int, D: int, p: np.ndarray, q: np.ndarray, terms: int, rank_a: int | None, rank_b: int | None
) -> np.ndarray:
    """`num_parameters` elementwise in float64 (exact below 2⁵³; used to shortlist)."""
    s, t = np.ceil(n / p), np.ceil(D / q)
    a = p * q if rank_a is None else rank_a * (p + q)
    b = s * t if rank_b is None else rank_b * (s + t)
    return terms * (a + b)


def choose_block_sizes(
    n: int,
    D: int,
    p: int | Literal["auto"],
    q: int | Literal["auto"] | None,
    *,
    pad: bool = False,
    terms: int = 1,
    rank_a: int | None = None,
    rank_b: int | None = None,
) -> tuple[int, int]:
    """Resolve block sizes: `"auto"` picks the value(s) that minimise l.

    `q=None` ties q to p. Candidates are the divisors of n (for p) and of D (for q); with
    `pad=True` every p ≤ n and q ≤ D (q = p ≤ min(n, D) when tied). Ties in l are broken
    toward balanced factors (p close to q, then the sizes of the two factors close to each
    other), then toward smaller p. The result is exact and its cost bounded: without padding
    only the two divisors of D around the real optimum are tried per p (l is strictly convex
    in q); with padding only the smallest block size of each ⌈n/p⌉ (and ⌈D/q⌉), O(√n + √D)
    of them, up to [`PAD_SEARCH_BUDGET`][hmfusion.structures.blocksizes.PAD_SEARCH_BUDGET] pairs.

    Args:
        n: output width, in [1, [`MAX_SIZE`][hmfusion.structures.blocksizes.MAX_SIZE]].
        D: input width, in [1, [`MAX_SIZE`][hmfusion.structures.blocksizes.MAX_SIZE]].
        p: rows of A: a positive int or `"auto"`.
        q: columns of A: a positive int, `"auto"`, or `None` (q = p).
        pad: whether n and D may be rounded up to multiples of p and q (as in the Kronecker
            members); without it p must divide n and q must divide D.
        terms: the number of Kronecker products, as in
            [`num_parameters`][hmfusion.structures.blocksizes.num_parameters].
        rank_a: the rank of A, or `None` for a dense A.
        rank_b: the rank of B, or `None` for a dense B.

    Returns:
        (p, q). Values given as ints are returned unchanged (they are checked by the caller).

    Raises:
        ValueError: n or D is outside
            [1, [`MAX_SIZE`][hmfusion.structures.blocksizes.MAX_SIZE]]; with `pad=True`, the
            search would need more than
            [`PAD_SEARCH_BUDGET`][hmfusion.structures.blocksizes.PAD_SEARCH_BUDGET] candidate pairs
            (give p or q).

    Example:
        >>> choose_block_sizes(64, 64, "auto", None)
        (8, 8)
    """
    _check_size(n)
    _check_size(D)
    if p != AUTO and q != AUTO:
        return int(p), int(p) if q is None else int(q)

    def key(pair: tuple[int, int]) -> tuple[int, Fraction, Fraction, int]:
        return (num_parameters(n, D, *pair, terms, rank_a, rank_b), *_tie_key(n, D, *pair))

    if not pad:
        ps = divisors(n) if p == AUTO else [int(p)]
        if q is None:
            common = set(divisors(D))
            return min(((a, a) for a in ps if a in common), key=key)
        qs = divisors(D) if q == AUTO else [int(q)]
        return min(
            ((a, b) for a in ps for b in _nearest(qs, _real_best_q(n, D, a, rank_a, rank_b))),
            key=key,
        )
    return min(_padded_shortlist(n, D, p, q, terms, rank_a, rank_b), key=key)


def _padded_shortlist(
    n: int,
    D: int,
    p: int | str,
    q: int | str | None,
    terms: int,
    rank_a: int | None,
    rank_b: int | None,
) -> list[tuple[int, int]]:
    """The (p, q) pairs whose l is within float rounding of the least, with `pad=True`."""
    cap_p = min(n, D) if q is None else n
    count_p = sum(_padded_range(n, cap_p)) if p == AUTO else 1
    if q is None:
        count = count_p + sum(_padded_range(D, cap_p))
    else:
        count = count_p * (sum(_padded_range(D, D)) if q == AUTO else 1)
    if count > PAD_SEARCH_BUDGET:
        raise ValueError(
            f"choosing block sizes with pad=True for n={n}, D={D} would compare {count} "
            f"candidates (more than {PAD_SEARCH_BUDGET}); "
            + ("pass p explicitly" if q is None else "pass p and q, or tie them (q=None)")
        )
    if q is None:
        ps = np.union1d(_padded_candidates(n, cap_p), _padded_candidates(D, cap_p))
        qs = None
    else:
        ps = _padded_candidates(n, n) if p == AUTO else np.array([float(p)])
        qs = _padded_candidates(D, D) if q == AUTO else np.array([float(q)])
    if qs is None:
        grid_p, grid_q = ps, ps
    else:
        grid_p, grid_q = (g.ravel() for g in np.meshgrid(ps, qs, indexing="ij"))
    ls = _l_float(n, D, grid_p, grid_q, terms, rank_a, rank_b)
    near = ls <= ls.min() * (1 + 1e-12)
    return [(int(a), int(b)) for a, b in zip(grid_p[near], grid_q[near])]
