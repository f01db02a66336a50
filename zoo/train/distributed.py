"""Distributed data parallel under ``torchrun``: process-group set-up, reductions, and model wrapping.

One process per device; ``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``. Without them
the run is a single process and every helper here is a no-op. Backends: NCCL on CUDA, Gloo on CPU.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn

from zoo.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """Where this process sits: its rank among ``world`` processes and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0 writes files, logs and draws the progress bar."""
        return self.rank == 0


def pick_device(device: str) -> torch.device:
    """``auto``: CUDA when there is one, else CPU; otherwise the named device, checked to exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        picked = torch.device(device)
    except RuntimeError:
        raise ConfigError("trainer.device", device, "auto, cpu, cuda or cuda:<index>") from None
    if picked.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device", device, "no CUDA device is visible here; use trainer.device=cpu or auto")
    return picked


def setup(*, device: str = "auto") -> Dist:
    """Join the process group ``torchrun`` describes (if any) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    picked = pick_device(device)
    if world <= 1:
        return Dist(device=picked)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if picked.type == "cuda":
        picked = torch.device("cuda", local_rank)
        torch.cuda.set_device(picked)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if picked.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Dist(rank=rank, world=world, local_rank=local_rank, device=picked)


def teardown() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, dist: Dist) -> torch.Tensor:
    """The elementwise sum over ranks (in place); the tensor itself on one process."""
    if dist.world > 1:
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: object, dist: Dist) -> list:
    """Every rank's ``obj`` (small Python values, e.g. RNG states for a checkpoint)."""
    if dist.world == 1:
        return [obj]
    out = [None] * dist.world
    torch_dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, dist: Dist) -> object:
    """Rank 0's ``obj`` on every rank."""
    if dist.world == 1:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(dist: Dist) -> None:
    if dist.world > 1:
        torch_dist.barrier()


def wrap(model: nn.Module, dist: Dist) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several ranks; the model itself otherwise."""
    if dist.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # a routed layer (mixture of experts) can leave an expert without tokens, hence without a
    # gradient, in a step; DDP must then look for unused parameters or it waits for them forever
    routed = any(hasattr(m, "router") for m in model.modules())
    return DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None, find_unused_parameters=routed)


class ModelView:
    """Calls go through the wrapper (DDP, ``torch.compile``); attributes come from the model.

    Objectives read ``model.arch`` and ``model.aux_loss()``; a DDP wrapper hides both, and calling
    the bare model would skip DDP's gradient hooks.
    """

    def __init__(self, wrapper: nn.Module, model: nn.Module) -> None:
        self._wrapper, self._model = wrapper, model

    def __call__(self, *args, **kwargs):
        return self._wrapper(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._model, name)
