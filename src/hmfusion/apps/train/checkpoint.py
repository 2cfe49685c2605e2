"""The checkpoint format: weights + JSON bound by run id and SHA-256, saved and verified.

A checkpoint is two files of one name: `<name>.pt` (the `state_dict`, tensors only, read with
`torch.load(weights_only=True)`) and `<name>.json` (the model config and the run's metadata).
The JSON records the SHA-256 of the `.pt` bytes, the SHA-256 of its own `"model"` config
(`"model_sha256"`: the classes and their order, the widths, the fusion — everything that changes
predictions) and the run id, so
[`load_checkpoint`][hmfusion.apps.train.checkpoint.load_checkpoint] refuses weights that do not
belong to the config (another run, a partial write), a config edited after training (classes
reordered would relabel every prediction), non-finite weights and a degenerate standardization.
Checkpoints written before `"model_sha256"` existed still load, their config unverified
(`hmfusion predict` says so in one line). The config's `"format"` and `"version"` fields are
[`CHECKPOINT_FORMAT`][hmfusion.apps.train.model.CHECKPOINT_FORMAT] and
[`CHECKPOINT_VERSION`][hmfusion.apps.train.model.CHECKPOINT_VERSION], which
[`make_config`][hmfusion.apps.train.model.MultiViewClassifier.make_config] writes into every config.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hmfusion.apps.train.model import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    FUSIONS,
    MultiViewClassifier,
)
from hmfusion.data import DataError
from hmfusion.ops.files import sha256_file

__all__ = ["load_checkpoint", "save_checkpoint"]

_MAX_JSON_BYTES = 1 << 20
_OPTION_KEYS = frozenset({"p", "q", "pad", "terms", "r", "seed"})


def save_checkpoint(
    directory: Path, name: str, state: Mapping[str, Tensor], meta: Mapping[str, Any]
) -> Path:
    """Write `<name>.pt` (`state`) and `<name>.json` (`meta` plus the SHA-256 of the
    `.pt` bytes) into `directory`; returns the `.pt` path.

    `meta` must hold `"model"` (the config) and `"run_id"`; write into a staging directory
    ([`OutputDirectory`][hmfusion.apps.outputs.OutputDirectory]) so that the pair appears
    together.
    """
    weights = directory / f"{name}.pt"
    # Serialized in memory, then written by Python: a full disk is an OSError naming the file
    # (torch.save's own writer raises a RuntimeError without errno).
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    _write(weights, buffer.getvalue())
    record = {
        **meta,
        "weights_sha256": sha256_file(weights),
        "model_sha256": _config_sha256(meta["model"]),
    }
    _write(directory / f"{name}.json", (json.dumps(record, indent=2) + "\n").encode())
    return weights


def _write(path: Path, data: bytes) -> None:
    """Write `data` to `path`; a failure (a full disk) is an OSError naming `path`."""
    try:
        path.write_bytes(data)
    except OSError as failure:
        if failure.filename:
            raise
        raise OSError(failure.errno, failure.strerror, str(path)) from None


def _config_sha256(config: Mapping[str, Any]) -> str:
    """The SHA-256 of the config's canonical JSON: every field that changes predictions (the
    classes and their order, the widths, the fusion and its options)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def load_checkpoint(
    path: str | Path, *, device: torch.device | str = "cpu"
) -> tuple[MultiViewClassifier, dict[str, Any]]:
    """Rebuild a model saved by `hmfusion train` from `<name>.pt` and `<name>.json`.

    `path` may name either file. The `.pt` is read with `torch.load(weights_only=True)`
    (nothing is unpickled beyond tensors) only after its SHA-256 matched the one in the JSON.

    Returns:
        The model (in eval mode, on `device`) and the JSON metadata.

    Raises:
        DataError: a missing or unreadable file; a JSON file that is not an hmfusion checkpoint
            config (malformed, nested too deep, a wrong format or version, fields of the wrong
            type, a `"model"` that differs from the one saved); weights that belong to another
            run or were partly written; weights that are
            not a tensor `state_dict` or do not fit the config; NaN or infinite weights; a
            standardization scale that is not positive.

    Example:
        >>> model, meta = load_checkpoint("hmfusion-results/checkpoints/hm.pt")  # doctest: +SKIP
    """
    path = Path(path)
    weights, config_path = path.with_suffix(".pt"), path.with_suffix(".json")
    for file in (weights, config_path):
        if not file.is_file():
            raise DataError(
                f"checkpoint file {str(file)!r} does not exist (a checkpoint is a "
                ".pt and a .json file of the same name)"
            )
    meta = _read_meta(config_path)
    config = meta["model"]
    recorded = meta.get("model_sha256")
    if recorded is not None and recorded != _config_sha256(config):
        raise DataError(
            f'{config_path}: its "model" fields were changed after training (the classes, '
            "their order, the widths or the fusion no longer match what was saved); use the "
            "files a train run wrote"
        )
    if sha256_file(weights) != meta["weights_sha256"]:
        raise DataError(
            f"{weights} does not belong to {config_path.name}: its contents differ "
            "from the weights saved with that config (another run, or a partial "
            "write); use the pair a single train run wrote"
        )
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as failure:  # noqa: BLE001 - any unreadable file is one DataError
        raise DataError(
            f"{weights} is not a readable tensor checkpoint "
            f"({type(failure).__name__}: {_first_line(failure)})"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, Tensor) for key, value in state.items()
    ):
        raise DataError(f"{weights} does not hold a state_dict of tensors")
    _check_weights(state, weights)
    model = _build_checked(config, state, weights, config_path)
    return model.to(device).eval(), meta


def _first_line(failure: BaseException) -> str:
    text = str(failure).strip()
    return text.splitlines()[0] if text else repr(failure)


def _read_meta(config_path: Path) -> dict[str, Any]:
    if config_path.stat().st_size > _MAX_JSON_BYTES:
        raise DataError(
            f"{config_path} is larger than {_MAX_JSON_BYTES} bytes; not an hmfusion "
            "checkpoint config"
        )
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as failure:
        raise DataError(f"{config_path} is not valid JSON: {failure}") from None
    except RecursionError:
        raise DataError(
            f"{config_path} is nested too deeply to be an hmfusion checkpoint config"
        ) from None
    config = meta.get("model") if isinstance(meta, dict) else None
    if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{config_path} is not an hmfusion train checkpoint config")
    if config.get("version") != CHECKPOINT_VERSION:
        raise DataError(
            f"{config_path}: checkpoint version {config.get('version')!r} is not "
            f"supported (this hmfusion reads version {CHECKPOINT_VERSION}; retrain "
            "to convert)"
        )
    if not isinstance(meta.get("weights_sha256"), str):
        raise DataError(f"{config_path} does not record the SHA-256 of its weights")
    if not isinstance(meta.get("model_sha256", ""), str):
        raise DataError(f"{config_path}: 'model_sha256' must be a string")
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
    if (
        not isinstance(names, list)
        or len(names) != len(widths)
        or not all(isinstance(name, str) for name in names)
    ):
        return "'view_names' must be a list of strings, one per view"
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(c, str) or _is_int(c, -(1 << 63)) for c in classes)
    ):
        return "'classes' must be a list of at least two integers or strings"
    if len(set(map(repr, classes))) != len(classes):
        return "'classes' holds a class twice"
    if not isinstance(config.get("fusion"), str) or config["fusion"] not in FUSIONS:
        return f"'fusion' must be one of {', '.join(FUSIONS)}"
    if not _is_int(config.get("hidden"), 0) or not _is_int(config.get("fused_width"), 1):
        return "'hidden' must be an integer >= 0 and 'fused_width' one >= 1"
    dropout = config.get("dropout")
    if (
        not isinstance(dropout, (int, float))
        or isinstance(dropout, bool)
        or not (0.0 <= dropout < 1.0)
    ):
        return "'dropout' must be a number in [0, 1)"
    options = config.get("fusion_options")
    if not isinstance(options, dict) or not set(options) <= _OPTION_KEYS:
        return f"'fusion_options' must be a dict with keys among {sorted(_OPTION_KEYS)}"
    return None


def _check_weights(state: Mapping[str, Tensor], weights: Path) -> None:
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise DataError(
                f"{weights}: {key} holds NaN or infinite values; the checkpoint "
                "cannot give meaningful predictions"
            )
        if key.startswith("standardize.") and key.endswith(".scale") and not (value > 0).all():
            raise DataError(
                f"{weights}: {key} (a standardization scale) is not positive "
                "everywhere; the checkpoint is degenerate"
            )


def _build_checked(
    config: Mapping[str, Any], state: Mapping[str, Tensor], weights: Path, config_path: Path
) -> MultiViewClassifier:
    """The model of `config` with `state` loaded; built on the meta device first, so a
    config whose sizes the weights do not have never allocates them."""
    try:
        skeleton = MultiViewClassifier(config, device="meta").state_dict()
        expected = {key: tuple(value.shape) for key, value in skeleton.items()}
        found = {key: tuple(value.shape) for key, value in state.items()}
        if expected != found:
            differ = sorted(set(expected) ^ set(found)) or sorted(
                key for key in expected if expected[key] != found[key]
            )
            raise DataError(
                f"{weights} does not match {config_path.name}: tensors differ at "
                f"{', '.join(differ[:3])}"
            )
        model = MultiViewClassifier(config)
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, KeyError) as failure:
        if isinstance(failure, DataError):
            raise
        raise DataError(
            f"{weights} does not match {config_path.name}: {_first_line(failure)}"
        ) from None
    return model
