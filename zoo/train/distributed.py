"""Data-parallel training under ``torchrun``: process-group set-up, reductions, and model wrapping.

One process per device; ``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``. Without them
the run is a single process and every helper here is a no-op. Backends: NCCL on CUDA, Gloo on CPU.
Two strategies (``trainer.strategy``): DDP keeps a whole copy of the model, its gradients and its
optimizer state on every rank; FSDP2 (``torch.distributed.fsdp.fully_shard``) shards all three over
the ranks and gathers each block's weights just for its forward and backward, so a model that
outgrows one device still trains. Checkpoints hold whole tensors either way (see :func:`full_state`).
"""

import gc
import os
from contextlib import contextmanager, nullcontext
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
    """Leave the process group. Call it once nothing refers to a DDP wrapper any more: a wrapper freed
    after the group is destroyed frees the group from its reducer while holding the GIL, and that
    deadlocks with Gloo's worker thread when it is still letting go of its last collective's tensors
    (which needs the GIL): 2 hangs in 15 two-rank runs, and none in 40 once ``zoo.train.loop.train``
    dropped its wrapper first. Freed here instead, the group's own destructor releases the GIL."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        gc.collect()  # a wrapper only a reference cycle still holds
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


STRATEGIES = ("auto", "ddp", "fsdp")


def pick_strategy(strategy: str, model: nn.Module, dist: Dist) -> str:
    """``auto``: DDP when a whole copy of the model with its gradients and AdamW's two moments (16
    bytes a parameter in fp32) takes at most half of the device's memory, else FSDP."""
    if strategy not in STRATEGIES:
        raise ConfigError("trainer.strategy", strategy, f"one of {', '.join(STRATEGIES)}")
    if strategy != "auto":
        return strategy
    if dist.device.type != "cuda":
        return "ddp"
    needed = 16 * sum(p.numel() for p in model.parameters())
    return "ddp" if needed <= torch.cuda.get_device_properties(dist.device).total_memory // 2 else "fsdp"


def wrap(model: nn.Module, dist: Dist, *, strategy: str = "ddp", mixed_precision: torch.dtype | None = None) -> nn.Module:
    """``model`` made data-parallel over the ranks: in DistributedDataParallel (``ddp``), or sharded in
    place with FSDP2 (``fsdp``: each block, then the rest); the model itself on one process.

    Under FSDP the model's parameters are replaced by sharded ones: build the optimizer after this.
    ``mixed_precision`` (FSDP on CUDA): compute in that dtype, reduce gradients in fp32."""
    if dist.world == 1:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        from zoo.arch.stack import Stack

        policy = MixedPrecisionPolicy(param_dtype=mixed_precision, reduce_dtype=torch.float32) if mixed_precision else MixedPrecisionPolicy()
        for stack in (m for m in model.modules() if isinstance(m, Stack)):
            for layer in stack.layers:
                fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    from torch.nn.parallel import DistributedDataParallel

    # a routed layer (mixture of experts) can leave an expert without tokens, hence without a
    # gradient, in a step; DDP must then look for unused parameters or it waits for them forever
    routed = any(hasattr(m, "router") for m in model.modules())
    return DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None, find_unused_parameters=routed)


def sharded(model: nn.Module) -> bool:
    """Whether FSDP2 sharded ``model`` (its parameters are then DTensors)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def no_sync(wrapper: nn.Module):
    """Gradients kept local for an accumulation micro-batch, synchronised on the step's last one."""
    if sharded(wrapper):
        wrapper.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            wrapper.set_requires_gradient_sync(True)
    else:
        with wrapper.no_sync() if hasattr(wrapper, "no_sync") else nullcontext():
            yield


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered whole on every rank (a collective); any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The model's and the optimizer's state dicts with whole tensors, as one process would hold them
    (every rank must call this: gathering is a collective). A tied matrix appears once, under the name
    ``safetensors.torch.save_model`` keeps (the first in sorted order), so both write the same file."""
    names: dict[int, list[str]] = {}
    for name, value in model.state_dict(keep_vars=True).items():
        names.setdefault(id(value), []).append(name)
    model_state = {}
    for name, value in model.state_dict(keep_vars=True).items():
        if name == sorted(names[id(value)])[0]:
            model_state[name] = full_tensor(value.detach()).cpu()
    optim_state = optimizer.state_dict()
    for state in optim_state["state"].values():
        for key, value in state.items():
            if torch.is_tensor(value):
                state[key] = full_tensor(value).cpu()
    return model_state, optim_state


def shard_like(optim_state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """An optimizer state dict with whole tensors, sharded like the parameters they belong to (FSDP)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, state in optim_state["state"].items():
        param = params[int(index)]
        if not isinstance(param, DTensor):
            continue
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape:
                state[key] = distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
    return optim_state


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
