"""The process a training run runs in: its rank and world under `torchrun`, its device, the run folder, and
what rank 0 reports to (trackers, RUN/log.txt, the run's clock); every function of the loop reads it."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from hms_train.run.config import TrainConfig
from hms_train.run.forward import resolve_device
from hms_train.run.progress import RunClock
from hms_train.run.tracking import Trackers


@dataclass
class Context:
    """What every function of the loop needs to know about the process it runs in."""

    config: TrainConfig
    out: Path
    device: torch.device
    rank: int = 0
    world: int = 1
    quiet: bool = False
    trackers: Trackers | None = None  # rank 0's experiment trackers
    log: Callable[[str], None] | None = None  # a line into RUN/log.txt (rank 0)
    clock: RunClock = dataclasses.field(default_factory=RunClock)  # the run's pace: its ETA

    @property
    def main(self) -> bool:
        return self.rank == 0


def open_context(config: TrainConfig, out: Path, quiet: bool) -> Context:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context(config, out, resolve_device(config.device), quiet=quiet)
    device = resolve_device(config.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(config, out, device, rank=dist.get_rank(), world=world, quiet=quiet)
