"""The processes of a training run: torchrun's environment, the process group, and agreement.

Outside torchrun a run is one process and every collective is a no-op. Under torchrun, ranks must
agree before training: [`Processes.agree`][hmfusion.apps.train.distributed.Processes.agree] is a
collective
that every rank reaches whatever happened to it (a load error is passed in, not raised), so a
failure on one rank stops all of them with that rank's message instead of leaving the others waiting
in a collective.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from hmfusion.apps.common import UsageError
from hmfusion.data import MultiViewData

__all__ = ["Processes", "environment", "fingerprint", "processes"]


def environment() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside it.

    Raises:
        UsageError: a malformed `RANK`/`WORLD_SIZE`/`LOCAL_RANK`.
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as failure:
        raise UsageError(f"malformed torchrun environment: {failure}") from None
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"malformed torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return rank, world, local


@dataclass
class Processes:
    """This process's place in a (possibly single-process) run.

    Attributes:
        rank: this process's global rank, as torchrun sets `RANK` (0 outside torchrun).
        world_size: the number of processes, torchrun's `WORLD_SIZE` (1 outside torchrun).
        local_rank: the rank on this machine, torchrun's `LOCAL_RANK` (0 outside torchrun).
        device: this process's device (each process's local GPU under torchrun with CUDA).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that reports and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process (under torchrun)."""
        return self.world_size > 1

    def sum(self, values: Tensor) -> Tensor:
        """Element-wise sum over all processes (in place; returned for chaining)."""
        if self.distributed:
            torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
        return values

    def barrier(self) -> None:
        """Wait for every process."""
        if self.distributed:
            torch.distributed.barrier()

    def agree(self, problem: str | None, data_fingerprint: str | None) -> str | None:
        """The first problem of any rank, or None when every rank is fine and holds the same data.

        A collective that every rank must reach exactly once per call, with its own `problem` (a
        one-line message, or None) and the
        [`fingerprint`][hmfusion.apps.train.distributed.fingerprint] of its
        data (None when it has none). Every rank gets the same answer, so all stop or all go on.
        """
        if not self.distributed:
            return problem
        reports: list[tuple[str | None, str | None]] = [(None, None)] * self.world_size
        torch.distributed.all_gather_object(reports, (problem, data_fingerprint))
        for rank, (message, _) in enumerate(reports):
            if message is not None:
                return f"rank {rank}: {message}"
        prints = [print_ for _, print_ in reports]
        if len(set(prints)) > 1:
            listing = "; ".join(f"rank {rank}: {print_}" for rank, print_ in enumerate(prints))
            return (
                f"the processes read different data ({listing}); every process must read "
                "the same files"
            )
        return None


def fingerprint(data: MultiViewData) -> str:
    """A short description and content hash of `data`: rows, view widths, classes, and the
    SHA-256 of every value and label. Equal data gives equal fingerprints.

    Example:
        >>> from hmfusion.data import load_mfeat
        >>> fingerprint(load_mfeat()).startswith("2000 rows, widths [76, 216, 64, 240, 47, 6]")
        True
    """
    digest = hashlib.sha256()
    for view in data.views:
        digest.update(repr(view.shape).encode())
        digest.update(np.ascontiguousarray(view).tobytes())
    if data.labels is not None:
        digest.update(np.ascontiguousarray(data.labels).tobytes())
    digest.update(repr(data.classes).encode())
    classes = "unlabelled" if data.classes is None else f"{len(data.classes)} classes"
    return (
        f"{data.num_rows} rows, widths {list(data.widths)}, {classes}, "
        f"sha256 {digest.hexdigest()[:16]}"
    )


@contextmanager
def processes(
    device: torch.device, rank: int, world_size: int, local_rank: int
) -> Iterator[Processes]:
    """The run's [`Processes`][hmfusion.apps.train.distributed.Processes]; under torchrun
    (`world_size > 1`)
    the process group is set up on entry (gloo on CPU, nccl on CUDA) and torn down on exit."""
    procs = Processes(rank, world_size, local_rank, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives use the current device
    if procs.distributed:
        torch.distributed.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size
        )
    try:
        yield procs
        if procs.distributed:
            # every rank done before any tears gloo down: a rank leaving while another still
            # talks to it aborted ("terminate called without an active exception") in CI
            torch.distributed.barrier()
    finally:
        if procs.distributed:
            torch.distributed.destroy_process_group()
