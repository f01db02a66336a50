"""Writing checkpoints that resume a run exactly and load without unpickling anything.

The layout and the readers every entry point shares are :mod:`zoo.run.checkpoint`. A checkpoint is
a folder ``<root>/step_<step>/``:

- ``model.safetensors``: the weights (tied matrices stored once), or ``trainable.safetensors``: only
  the parameters that train, when the rest is frozen (LoRA, a probe) and comes from ``trainer.init_from``;
- ``optimizer.safetensors``: every optimizer state tensor, flattened to ``state.<param>.<name>``;
- ``rng.safetensors``: each rank's torch CPU (and CUDA) generator state;
- ``state.json``: step, tokens seen, the data loader's position, the optimizer's hyper-parameters
  and non-tensor state, Python's ``random`` state;
- ``config.yaml``: the resolved config; ``tokenizer/``: the tokenizer, reloadable with
  :func:`zoo.tokenizer.load_tokenizer`.

Writing is atomic: the folder is written under a temporary name in ``<root>``, every file is
fsynced, the folder is renamed into place with ``os.replace``, and only then does ``latest.json``
(itself replaced atomically) point at it. A crash at any moment leaves the previous checkpoint whole
and ``latest.json`` pointing at it.
"""

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

# the layout and the readers live in the run layer, which zoo-generate and zoo-bench share
from zoo.run.checkpoint import LATEST, STATE, TRAINABLE, Checkpoint, find, fsync_path, load_safetensors, load_weights, write_atomic  # noqa: F401


def optimizer_tensors(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state dict as flat tensors (``state.<param>.<name>``) plus JSON for the rest."""
    tensors, scalars = {}, {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_state_dict(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of :func:`optimizer_tensors`: a state dict ``Optimizer.load_state_dict`` takes."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_tensors() -> dict[str, torch.Tensor]:
    """This process's torch generator states (CPU, and every CUDA device)."""
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save(
    root: str | Path,
    *,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer: dict,
    state: dict,
    rng: dict[str, torch.Tensor],
    config_yaml: str,
    tokenizer=None,
    keep_last: int = 1,
    only_trainable: bool = False,
) -> Path:
    """Write the checkpoint of ``step`` atomically under ``root`` and prune older ones.

    Args:
        root: the checkpoints folder of a run.
        step: optimizer steps done.
        weights: the model's state dict with whole tensors, each tied matrix once
            (:func:`zoo.train.distributed.full_state`, whatever the strategy).
        optimizer: the optimizer's state dict, whole tensors too.
        state: JSON-able training state (loader position, tokens seen, ...); ``step`` is added.
        rng: generator states from :func:`rng_tensors`, keyed per rank (``rank0.torch_cpu``, ...).
        config_yaml: the resolved config.
        tokenizer: saved into ``tokenizer/`` when given.
        keep_last: how many checkpoints to keep (the newest ones).
        only_trainable: ``weights`` holds only the parameters that train (``trainable.safetensors``):
            the frozen rest comes from ``trainer.init_from`` (LoRA, a probe).

    Returns: the checkpoint folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-step-"))
    try:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / (TRAINABLE if only_trainable else "model.safetensors")))
        tensors, optim_meta = optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        save_file({k: v.contiguous() for k, v in rng.items()}, str(tmp / "rng.safetensors"))
        full_state = {**state, "step": step, "optimizer": optim_meta, "python_random": _jsonable(random.getstate())}
        (tmp / STATE).write_text(json.dumps(full_state, indent=1))
        (tmp / "config.yaml").write_text(config_yaml)
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer")
        for file in tmp.rglob("*"):
            fsync_path(file)
        if final.exists():  # a re-save of the same step: set the old copy aside, never half-delete it
            aside = Path(tempfile.mkdtemp(dir=root, prefix=".old-step-"))
            os.replace(final, aside / final.name)
            shutil.rmtree(aside, ignore_errors=True)
        os.replace(tmp, final)
        fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_atomic(root / LATEST, json.dumps({"step": step, "path": final.name}) + "\n")
    prune(root, keep_last=keep_last, keep=final)
    return final


def prune(root: Path, *, keep_last: int, keep: Path) -> None:
    """Delete all but the ``keep_last`` newest checkpoints (never ``keep``; ``keep_last <= 0`` keeps
    all), and temp folders a crashed save left behind (only rank 0 ever writes here)."""
    for pattern in (".tmp-step-*", ".old-step-*"):
        for stale in root.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)
    if keep_last <= 0:
        return
    steps = sorted(p for p in root.glob("step_*") if p.is_dir() and p != keep)
    for old in steps[: max(len(steps) - (keep_last - 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)


def load_optimizer(checkpoint: Checkpoint, optimizer: torch.optim.Optimizer) -> None:
    """Load the optimizer state, each tensor sharded like its parameter when the model is sharded (FSDP)."""
    from zoo.train.distributed import shard_like

    tensors = load_safetensors(checkpoint.path / "optimizer.safetensors")
    optimizer.load_state_dict(shard_like(optimizer_state_dict(tensors, checkpoint.state["optimizer"]), optimizer))


def load_rng(checkpoint: Checkpoint, *, rank: int) -> None:
    """Restore this rank's generators (rank 0's when the run had fewer ranks) and Python's ``random``."""
    tensors = load_safetensors(checkpoint.path / "rng.safetensors")
    prefix = f"rank{rank}." if any(k.startswith(f"rank{rank}.") for k in tensors) else "rank0."
    restore_rng({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    random.setstate(_tuples(checkpoint.state["python_random"]))


def _jsonable(value):
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
