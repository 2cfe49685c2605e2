"""The multi-view classifier that `hmfusion train` fits, and the config it is rebuilt from.

[`MultiViewClassifier`][hmfusion.apps.train.model.MultiViewClassifier] is built from a
JSON-compatible
config alone, so a checkpoint stores that config next to the `state_dict`; the checkpoint files
themselves are written and verified by
[`hmfusion.apps.train.checkpoint`][hmfusion.apps.train.checkpoint].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import hmfusion
from hmfusion.data import MultiViewData

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "FUSIONS",
    "KRONECKER_FUSIONS",
    "MultiViewClassifier",
    "Standardize",
]

#: Fusion names and their layers; `"mean"` (the average of the view encodings) has none.
FUSIONS: dict[str, type[hmfusion.ConcatFusion] | None] = {
    "hm": hmfusion.HMConcatFusion,
    "dense": hmfusion.DenseConcatFusion,
    "lowrank": hmfusion.LowRankConcatFusion,
    "lphm": hmfusion.LPHMConcatFusion,
    "dual_lphm": hmfusion.DualLPHMConcatFusion,
    "random": hmfusion.RandomMatrixConcatFusion,
    "mean": None,
}
#: The fusions with Kronecker factors, whose `p`, `q` and `pad` a checkpoint records.
KRONECKER_FUSIONS = ("hm", "lphm", "dual_lphm")
#: The `"format"` field of every config, so of every checkpoint JSON;
#: [`load_checkpoint`][hmfusion.apps.train.checkpoint.load_checkpoint] refuses any other value.
CHECKPOINT_FORMAT = "hmfusion-multiview-classifier"
#: 2: the JSON binds its `.pt` by SHA-256 and run id.
CHECKPOINT_VERSION = 2


class Standardize(nn.Module):
    """`(x - mean) / scale` per feature, with mean and scale fitted on the training rows.

    Args:
        width: the number of features d.

    Shape:
        `(*, d) -> (*, d)`. Both are persistent buffers, so a checkpoint standardizes new rows
        exactly as in training.

    Example:
        >>> s = Standardize(2)
        >>> s.fit_(np.array([[0.0, 1.0], [2.0, 1.0]]))
        >>> s(torch.tensor([[2.0, 1.0]], dtype=torch.float64)).tolist()
        [[1.0, 0.0]]
    """

    mean: Tensor
    scale: Tensor

    def __init__(
        self,
        width: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(width, device=device, dtype=dtype))
        self.register_buffer("scale", torch.ones(width, device=device, dtype=dtype))

    def fit_(self, values: np.ndarray) -> None:
        """Set mean and scale from rows `values` (N, d); constant features get scale 1."""
        mean = values.mean(axis=0)
        std = values.std(axis=0)
        std = np.where(std > 1e-8 * (1.0 + np.abs(mean)), std, 1.0)
        with torch.no_grad():
            self.mean.copy_(torch.from_numpy(mean))
            self.scale.copy_(torch.from_numpy(std))

    def forward(self, x: Tensor) -> Tensor:
        """`(x - mean) / scale`."""
        return (x - self.mean) / self.scale

    def extra_repr(self) -> str:
        """The width d, as `Standardize(d)` prints."""
        return f"{self.mean.shape[0]}"


class MultiViewClassifier(nn.Module):
    """Standardize -> encode -> fuse -> classify k views of the same rows.

    `z_i = Dropout(GELU(Linear_i((x_i - μ_i) / σ_i)))` of width `hidden` (or the standardized
    view itself when `hidden == 0`); `f = fusion([z_1, …, z_k])` of width `fused_width` (the
    mean of the z_i for `"mean"`); `logits = Linear(Dropout(GELU(f)))`.

    Args:
        config: a JSON-compatible dict (see
            [`make_config`][hmfusion.apps.train.model.MultiViewClassifier.make_config]); it is all
            that is
            needed to rebuild the model, so checkpoints store it next to the `state_dict`.
        device: where to create the parameters (None: the default device).
        dtype: the parameters' dtype (None: the default dtype).

    Shape:
        - Input: a list of k tensors, view i of shape `(*, widths[i])`.
        - Output: `(*, len(classes))` logits.

    Raises:
        ValueError: an unknown fusion; `"mean"` fusion with views of different widths (use
            `hidden > 0`); the fusion layer's own checks (see [`hmfusion.fusion`][hmfusion.fusion]).

    Example:
        >>> from hmfusion.data import load_mfeat
        >>> config = MultiViewClassifier.make_config(load_mfeat(), "hm", hidden=8,
        ...     fused_width=None, fusion_options={}, dropout=0.0)
        >>> MultiViewClassifier(config)([torch.zeros(2, w) for w in config["widths"]]).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = dict(config)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        widths, hidden, dropout = config["widths"], config["hidden"], config["dropout"]
        self.standardize = nn.ModuleList(Standardize(w, **factory) for w in widths)
        if hidden > 0:
            self.encoders = nn.ModuleList(
                nn.Sequential(nn.Linear(w, hidden, **factory), nn.GELU(), nn.Dropout(dropout))
                for w in widths
            )
            dims = [hidden] * len(widths)
        else:
            self.encoders = nn.ModuleList(nn.Identity() for _ in widths)
            dims = list(widths)
        self.fusion = _build_fusion(
            config["fusion"], dims, config["fused_width"], config["fusion_options"], factory
        )
        fused = dims[0] if self.fusion is None else config["fused_width"]
        self.head = nn.Sequential(
            nn.GELU(), nn.Dropout(dropout), nn.Linear(fused, len(config["classes"]), **factory)
        )

    @staticmethod
    def make_config(
        data: MultiViewData,
        fusion: str,
        *,
        hidden: int,
        fused_width: int | None,
        fusion_options: Mapping[str, Any],
        dropout: float,
    ) -> dict[str, Any]:
        """The model config for `data`; `fused_width` None means `hidden` (or 64 without
        encoders). The mean fusion's width is that of the encodings."""
        if fusion == "mean":
            fused_width = hidden if hidden > 0 else data.widths[0]
        elif fused_width is None:
            fused_width = hidden if hidden > 0 else 64
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "view_names": list(data.view_names),
            "widths": list(data.widths),
            "classes": list(data.classes or ()),
            "hidden": hidden,
            "fusion": fusion,
            "fused_width": fused_width,
            "fusion_options": dict(fusion_options),
            "dropout": dropout,
        }

    def resolved_config(self) -> dict[str, Any]:
        """The config with the fusion's automatic choices (p, q, pad) written out, so that a
        checkpoint rebuilds exactly this layer whatever future versions pick for `"auto"`."""
        config = dict(self.config)
        options = dict(config["fusion_options"])
        fusion: Any = self.fusion
        if config["fusion"] in KRONECKER_FUSIONS:
            options.update(p=fusion.p, q=fusion.q, pad=fusion.pad)
        config["fusion_options"] = options
        return config

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        """Logits of shape `(*, len(classes))` for the k views (view i `(*, widths[i])`)."""
        encoded = [enc(std(x)) for std, enc, x in zip(self.standardize, self.encoders, views)]
        if self.fusion is None:
            fused = torch.stack(encoded).mean(dim=0)
        else:
            fused = self.fusion(encoded)
        return self.head(fused)

    @property
    def fusion_parameters(self) -> int:
        """Trained values of the fusion layer, its bias included (0 for `"mean"`)."""
        if self.fusion is None:
            return 0
        return sum(p.numel() for p in self.fusion.parameters() if p.requires_grad)

    @property
    def num_parameters(self) -> int:
        """Trained values of the whole model."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _build_fusion(
    name: str, dims: list[int], n: int, options: Mapping[str, Any], factory: dict[str, Any]
) -> nn.Module | None:
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; choose from {', '.join(FUSIONS)}")
    layer: Any = FUSIONS[name]  # each member's own constructor: (dims, n, **options)
    if layer is None:
        if len(set(dims)) > 1:
            raise ValueError(
                f"mean fusion averages the view encodings, so they need one width; "
                f"got widths {dims} (use --hidden > 0)"
            )
        return None
    return layer(dims, n, bias=True, **options, **factory)
