"""Draw the figures of the "How it works" page into docs/assets/figures/ (PNG, committed).

Run from the repository root after changing this script: ``python tools/docs/make_figures.py``.
The figures show math, not measurements, so they do not depend on the machine.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "docs" / "assets" / "figures"


def kronecker_structure(path: Path) -> None:
    """W = A ⊗ B as p×q blocks a_ij·B, and one row of Y computed as A X_r Bᵀ."""
    p, q, s, t = 3, 4, 4, 3
    rng = np.random.default_rng(3)
    A = rng.uniform(-1, 1, (p, q))
    B = rng.uniform(-1, 1, (s, t))
    W = np.kron(A, B)
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.1, 1.6]}
    )
    left.imshow(W, cmap="RdBu_r", vmin=-1, vmax=1)
    for i in range(1, p):
        left.axhline(i * s - 0.5, color="black", lw=1.5)
    for j in range(1, q):
        left.axvline(j * t - 0.5, color="black", lw=1.5)
    left.set_title(
        f"W = A ⊗ B   (n×D = {p * s}×{q * t})\nblock (i, j) is a_ij·B;  A: {p}×{q},  B: {s}×{t}"
    )
    left.set_xlabel("D = q·t input features (columns of W)")
    left.set_ylabel("n = p·s outputs")
    left.set_xticks([])
    left.set_yticks([])

    right.set_xlim(0, 16)
    right.set_ylim(0, 7)
    right.axis("off")
    right.set_title("the factored plans: row x (length D) → row y (length n), W not formed")

    def box(x: float, y: float, w: float, h: float, label: str, color: str) -> None:
        right.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor="black"))
        right.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=10)

    def arrow(x0: float, x1: float, y: float, label: str) -> None:
        right.add_patch(FancyArrowPatch((x0, y), (x1, y), arrowstyle="-|>", mutation_scale=14))
        right.text((x0 + x1) / 2, y + 0.35, label, ha="center", fontsize=9)

    box(0.2, 5.6, 6.0, 0.5, "x  (D)", "#dbe8f5")
    right.text(6.5, 5.85, "view as", va="center", fontsize=9)
    box(8.2, 4.4, 1.8, 2.4, "X_r\nq×t", "#dbe8f5")
    arrow(10.2, 11.8, 5.6, "· Bᵀ")
    box(12.0, 4.4, 2.4, 2.4, "X_r Bᵀ\nq×s", "#fde6c8")
    right.text(8.0, 3.4, "right-first: q·s·t  then  p·q·s  multiply-adds", fontsize=9)
    box(8.2, 0.6, 2.4, 1.8, "A X_r Bᵀ\np×s", "#d9f0d3")
    arrow(14.2, 10.9, 1.5, "A ·")
    right.text(0.2, 1.5, "flatten row-major →  y  (n = p·s)", fontsize=10, va="center")
    right.text(0.2, 0.5, "left-first: (A X_r) Bᵀ,  p·q·t + p·t·s", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cost_versus_block_size(path: Path) -> None:
    """Parameters and multiply-adds per row of A ⊗ B against p = q, for n = D = 4096."""
    n = D = 4096
    ps = np.array([2**k for k in range(0, 13)])
    s, t = n // ps, D // ps
    params = ps * ps + s * t
    macs = np.minimum(ps * s * (t + ps), ps * t * (ps + s))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.loglog(ps, np.full(ps.shape, n * D), "k--", label="dense W: n·D (both)")
    ax.loglog(ps, params, "o-", label="A ⊗ B parameters: p·q + s·t")
    ax.loglog(ps, macs, "s-", label="A ⊗ B multiply-adds per row: min(q·s·(t+p), p·t·(q+s))")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("block size p = q  (s = n/p, t = D/q)")
    ax.set_ylabel("count")
    ax.set_title("n = D = 4096: the factored product is cheapest near p = √n")
    ax.set_ylim(50, 3e7)  # room below the curves for the legend
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    kronecker_structure(OUT / "kronecker-structure.png")
    cost_versus_block_size(OUT / "cost-vs-block-size.png")


if __name__ == "__main__":
    main()
