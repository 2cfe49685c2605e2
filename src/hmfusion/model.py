"""The multi-view classifier that `hmfusion train` fits, and its checkpoint format.

A checkpoint is two files of one name: `<name>.pt` (the `state_dict`, tensors only, read with
`torch.load(weights_only=True)`) and `<name>.json` (the model config and the run's metadata).
The JSON records the SHA-256 of the `.pt` bytes and the run id, so
[`load_checkpoint`][hmfusion.model.load_checkpoint] refuses weights that do not belong to the config
(another run, a partial write), as well as non-finite weights and a degenerate standardization.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import hmfusion
from hmfusion.data import DataError, MultiViewData

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "FUSIONS",
    "KRONECKER_FUSIONS",
    "MultiViewClassifier",
    "Standardize",
    "load_checkpoint",
    "save_checkpoint",
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
#: The `"format"` field of every checkpoint JSON; `load_checkpoint` refuses any other value.
CHECKPOINT_FORMAT = "hmfusion-multiview-classifier"
#: 2: the JSON binds its `.pt` by SHA-256 and run id.
CHECKPOINT_VERSION = 2
_MAX_JSON_BYTES = 1 << 20
_OPTION_KEYS = frozenset({"p", "q", "pad", "terms", "r", "seed"})


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

    def __init__(self, width: int, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
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
            [`make_config`][hmfusion.model.MultiViewClassifier.make_config]); it is all that is
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

    def __init__(self, config: Mapping[str, Any], *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
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
        self.fusion = _build_fusion(config["fusion"], dims, config["fused_width"],
                                    config["fusion_options"], factory)
        fused = dims[0] if self.fusion is None else config["fused_width"]
        self.head = nn.Sequential(nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(fused, len(config["classes"]), **factory))

    @staticmethod
    def make_config(data: MultiViewData, fusion: str, *, hidden: int, fused_width: int | None,
                    fusion_options: Mapping[str, Any], dropout: float) -> dict[str, Any]:
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


def _build_fusion(name: str, dims: list[int], n: int, options: Mapping[str, Any],
                  factory: dict[str, Any]) -> nn.Module | None:
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; choose from {', '.join(FUSIONS)}")
    layer: Any = FUSIONS[name]  # each member's own constructor: (dims, n, **options)
    if layer is None:
        if len(set(dims)) > 1:
            raise ValueError(f"mean fusion averages the view encodings, so they need one width; "
                             f"got widths {dims} (use --hidden > 0)")
        return None
    return layer(dims, n, bias=True, **options, **factory)


# checkpoints ----------------------------------------------------------------------------------
def save_checkpoint(directory: Path, name: str, state: Mapping[str, Tensor],
                    meta: Mapping[str, Any]) -> Path:
    """Write `<name>.pt` (`state`) and `<name>.json` (`meta` plus the SHA-256 of the
    `.pt` bytes) into `directory`; returns the `.pt` path.

    `meta` must hold `"model"` (the config) and `"run_id"`; write into a staging directory
    ([`OutputDirectory`][hmfusion.cli_common.OutputDirectory]) so that the pair appears
    together.
    """
    weights = directory / f"{name}.pt"
    torch.save(dict(state), weights)
    record = {**meta, "weights_sha256": _sha256(weights)}
    (directory / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n",
                                            encoding="utf-8")
    return weights


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | Path, *, device: torch.device | str = "cpu"
                    ) -> tuple[MultiViewClassifier, dict[str, Any]]:
    """Rebuild a model saved by `hmfusion train` from `<name>.pt` and `<name>.json`.

    `path` may name either file. The `.pt` is read with `torch.load(weights_only=True)`
    (nothing is unpickled beyond tensors) only after its SHA-256 matched the one in the JSON.

    Returns:
        The model (in eval mode, on `device`) and the JSON metadata.

    Raises:
        DataError: a missing or unreadable file; a JSON file that is not an hmfusion checkpoint
            config (malformed, nested too deep, a wrong format or version, fields of the wrong
            type); weights that belong to another run or were partly written; weights that are
            not a tensor `state_dict` or do not fit the config; NaN or infinite weights; a
            standardization scale that is not positive.

    Example:
        >>> model, meta = load_checkpoint("hmfusion-results/checkpoints/hm.pt")  # doctest: +SKIP
    """
    path = Path(path)
    weights, config_path = path.with_suffix(".pt"), path.with_suffix(".json")
    for file in (weights, config_path):
        if not file.is_file():
            raise DataError(f"checkpoint file {str(file)!r} does not exist (a checkpoint is a "
                            ".pt and a .json file of the same name)")
    meta = _read_meta(config_path)
    config = meta["model"]
    if _sha256(weights) != meta["weights_sha256"]:
        raise DataError(f"{weights} does not belong to {config_path.name}: its contents differ "
                        "from the weights saved with that config (another run, or a partial "
                        "write); use the pair a single train run wrote")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as failure:  # noqa: BLE001 - any unreadable file is one DataError
        raise DataError(f"{weights} is not a readable tensor checkpoint "
                        f"({type(failure).__name__}: {_first_line(failure)})") from None
    if not isinstance(state, dict) or not all(isinstance(key, str) and isinstance(value, Tensor)
                                              for key, value in state.items()):
        raise DataError(f"{weights} does not hold a state_dict of tensors")
    _check_weights(state, weights)
    model = _build_checked(config, state, weights, config_path)
    return model.to(device).eval(), meta


def _first_line(failure: BaseException) -> str:
    text = str(failure).strip()
    return text.splitlines()[0] if text else repr(failure)


def _read_meta(config_path: Path) -> dict[str, Any]:
    if config_path.stat().st_size > _MAX_JSON_BYTES:
        raise DataError(f"{config_path} is larger than {_MAX_JSON_BYTES} bytes; not an hmfusion "
                        "checkpoint config")
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as failure:
        raise DataError(f"{config_path} is not valid JSON: {failure}") from None
    except RecursionError:
        raise DataError(f"{config_path} is nested too deeply to be an hmfusion checkpoint "
                        "config") from None
    config = meta.get("model") if isinstance(meta, dict) else None
    if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{config_path} is not an hmfusion train checkpoint config")
    if config.get("version") != CHECKPOINT_VERSION:
        raise DataError(f"{config_path}: checkpoint version {config.get('version')!r} is not "
                        f"supported (this hmfusion reads version {CHECKPOINT_VERSION}; retrain "
                        "to convert)")
    if not isinstance(meta.get("weights_sha256"), str):
        raise DataError(f"{config_path} does not record the SHA-256 of its weights")
    problem = _config_problem(config)
    if problem:
        raise DataError(f"{config_path}: {problem}")
    return meta


def _is_int(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _config_problem(config: Mapping[str, Any]) -> str | None:
    """What is wrong with a config read from JSON, or None."""
    widths, names, classes = config.get("widths"), config.get("view_names"), config.get("classes")
    if not isinstance(widths, list) or not widths or not all(_is_int(w, 1) for w in widths):
        return "'widths' must be a non-empty list of positive integers"
    if not isinstance(names, list) or len(names) != len(widths) or not all(
            isinstance(name, str) for name in names):
        return "'view_names' must be a list of strings, one per view"
    if not isinstance(classes, list) or len(classes) < 2 or not all(
            isinstance(c, str) or _is_int(c, -(1 << 63)) for c in classes):
        return "'classes' must be a list of at least two integers or strings"
    if len(set(map(repr, classes))) != len(classes):
        return "'classes' holds a class twice"
    if config.get("fusion") not in FUSIONS:
        return f"'fusion' must be one of {', '.join(FUSIONS)}"
    if not _is_int(config.get("hidden"), 0) or not _is_int(config.get("fused_width"), 1):
        return "'hidden' must be an integer >= 0 and 'fused_width' one >= 1"
    dropout = config.get("dropout")
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not (
            0.0 <= dropout < 1.0):
        return "'dropout' must be a number in [0, 1)"
    options = config.get("fusion_options")
    if not isinstance(options, dict) or not set(options) <= _OPTION_KEYS:
        return f"'fusion_options' must be a dict with keys among {sorted(_OPTION_KEYS)}"
    return None


def _check_weights(state: Mapping[str, Tensor], weights: Path) -> None:
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise DataError(f"{weights}: {key} holds NaN or infinite values; the checkpoint "
                            "cannot give meaningful predictions")
        if key.startswith("standardize.") and key.endswith(".scale") and not (value > 0).all():
            raise DataError(f"{weights}: {key} (a standardization scale) is not positive "
                            "everywhere; the checkpoint is degenerate")


def _build_checked(config: Mapping[str, Any], state: Mapping[str, Tensor], weights: Path,
                   config_path: Path) -> MultiViewClassifier:
    """The model of `config` with `state` loaded; built on the meta device first, so a
    config whose sizes the weights do not have never allocates them."""
    try:
        skeleton = MultiViewClassifier(config, device="meta").state_dict()
        expected = {key: tuple(value.shape) for key, value in skeleton.items()}
        found = {key: tuple(value.shape) for key, value in state.items()}
        if expected != found:
            differ = sorted(set(expected) ^ set(found)) or sorted(
                key for key in expected if expected[key] != found[key])
            raise DataError(f"{weights} does not match {config_path.name}: tensors differ at "
                            f"{', '.join(differ[:3])}")
        model = MultiViewClassifier(config)
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, KeyError) as failure:
        if isinstance(failure, DataError):
            raise
        raise DataError(f"{weights} does not match {config_path.name}: "
                        f"{_first_line(failure)}") from None
    return model
