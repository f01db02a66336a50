"""A run of ``zoo-train``: any composed model, any objective, one process or many.

:func:`train` claims the run's folder, checks every config group before the heavy work, builds the parts
(tokenizer, data, model, objective), wraps the model for data parallelism, restores a checkpoint when it
resumes, and hands the steps to :class:`~zoo.train.steps.Loop`; whatever happens, ``metrics.json``
records how the run ended.
"""

import json
import sys
import time
import traceback
from contextlib import ExitStack, nullcontext
from functools import partial
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from zoo.config import resolved_config
from zoo.errors import ConfigError
from zoo.run.folder import FolderTaken, claim, is_held, record_hydra
from zoo.train import checkpoint as ckpt
from zoo.train.components import build, build_node
from zoo.train.distributed import Dist, broadcast_object, pick_strategy, setup, teardown, wrap
from zoo.train.recompute import recompute_blocks
from zoo.train.resume import check_same_config, find_resume, restore, restore_weights, resumes_here
from zoo.train.settings import Settings
from zoo.train.steps import Autocast, Loop, RunResult
from zoo.train.sweep import RunInfo

METRICS_FILE = "metrics.json"


def autocast_for(settings: Settings, device: torch.device) -> Autocast:
    """The mixed-precision context of a run: bf16 autocast with precision ``bf16`` on any device whose
    torch has it (CUDA with bf16, CPU), and with ``auto`` on CUDA only (on most CPUs bf16 matmuls are
    slower than fp32); fp32 elsewhere. Weights, optimizer state and the loss stay float32."""
    if settings.precision == "fp32":
        return nullcontext
    available = torch.cuda.is_bf16_supported() if device.type == "cuda" else torch.amp.is_autocast_available(device.type)
    if settings.precision == "bf16" and not available:
        raise ConfigError("trainer.precision", "bf16", f"this torch has no bf16 autocast on {device.type}; use auto or fp32")
    if available and (settings.precision == "bf16" or device.type == "cuda"):
        return partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
    return nullcontext




def train(cfg: DictConfig, *, out_dir: str | Path, info: RunInfo | None = None) -> RunResult:
    """Train the model ``cfg`` describes; write checkpoints, ``metrics.json`` and the logger's run.

    Args:
        cfg: a composed config (``zoo.compose([...])`` or Hydra's); ``cfg.model.vocab_size`` is set here.
        out_dir: the run's folder (Hydra's output folder in ``zoo-train``).
        info: the run's name, group and choices; default from ``cfg.hydra`` when present.

    Returns: the :class:`RunResult`; a config mistake raises :class:`~zoo.errors.ConfigError`
    (after ``metrics.json`` records it), a diverged run returns with ``status="diverged"``.
    """
    out_dir = Path(out_dir)
    info = info or (RunInfo.from_hydra(cfg.hydra) if "hydra" in cfg else RunInfo())
    result = RunResult(out_dir=out_dir)
    dist, logger, started, held, claimed = Dist(), None, time.time(), ExitStack(), False
    joined = torch.distributed.is_available() and torch.distributed.is_initialized()  # a caller's group stays up
    try:
        settings = Settings.from_config(cfg.trainer)
        settings.configure_process()
        dist = setup(device=settings.device)
        out_dir = result.out_dir = Path(broadcast_object(str(out_dir), dist))  # ranks may have started in different seconds
        if dist.main:  # the folder is this run's from here on (zoo.run.folder)
            held.enter_context(claim(out_dir, resume=resumes_here(settings, out_dir), overwrite=settings.overwrite))
            claimed = True
            record_hydra(out_dir, cfg)
        autocast = autocast_for(settings, dist.device)
        # every group checked before the heavy work below (tokenizer, corpus, model)
        optim = build_node(cfg.optim, "optim")
        schedule = build_node(cfg.sched, "sched")
        logger_node = build_node(cfg.logger, "logger") if dist.main else None
        resume = find_resume(settings, out_dir)
        if resume is not None:
            check_same_config(resume, cfg)
        tokenizer = None
        if resume is not None:
            tokenizer = resume.tokenizer()  # one of zoo's tokenizer classes, never a module the file names
        pretrained = None
        if settings.init_from:
            from zoo.finetune.pretrained import open_pretrained

            pretrained = open_pretrained(settings.init_from)
            cfg = pretrained.rebase(cfg, info.overrides)
            settings = Settings.from_config(cfg.trainer)  # seq_len may follow the source's model.max_seq_len
            tokenizer = tokenizer or pretrained.tokenizer
        parts = build(cfg, settings=settings, dist=dist, tokenizer=tokenizer)
        if pretrained is not None:  # also under a resume: a checkpoint of what trained needs the rest from here
            report = pretrained.load_into(parts.model, strict=settings.init_strict)
            result.metrics["init"] = {"from": str(pretrained.path), **report.summary()}
            if dist.main and not (info.multirun if settings.quiet is None else settings.quiet):
                print(f"zoo-train: initial weights from {pretrained.path}: {report.describe()}", file=sys.stderr)
        objective = parts.make_objective(rank=dist.rank)
        result.metrics["parameters_trainable"] = adapt(cfg, parts.model, objective=objective, data=parts.data)
        if resume is not None:
            restore_weights(resume, parts)
        if settings.activation_checkpointing:
            recompute_blocks(parts.model)
        strategy = pick_strategy(settings.strategy, parts.model, dist)
        wrapper = wrap(parts.model, dist, strategy=strategy, mixed_precision=torch.bfloat16 if autocast is not nullcontext else None)
        optimizer = optim.build(parts.model)  # after wrapping: FSDP replaces the parameters by shards
        if resume is not None:
            restore(resume, parts, optimizer, objective, dist)
        if dist.main:
            out_dir.mkdir(parents=True, exist_ok=True)
            logger = logger_node
            config = {**resolved_config(cfg), "choices": info.choices}
            logger.start(config=config, name=info.name, group=info.group, tags=info.overrides, out_dir=out_dir)
        loop = Loop(cfg, settings=settings, parts=parts, optimizer=optimizer, optim=optim, schedule=schedule, objective=objective, out_dir=out_dir)
        loop.run(wrapper, dist=dist, autocast=autocast, logger=logger, info=info, result=result, resume=resume)
        result.metrics.update(status=result.status, wall_s=time.time() - started)
        if dist.main:
            _finish(logger, result, info, out_dir, failed=result.status != "ok")
        return result
    except BaseException as e:
        # never write into a folder another run holds (its refusal is the error being raised)
        if dist.main and not isinstance(e, FolderTaken) and (claimed or not is_held(out_dir)):
            result.status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            result.metrics.update(status=result.status, error=f"{type(e).__name__}: {e}", wall_s=time.time() - started)
            try:
                _finish(logger, result, info, out_dir, failed=True)
            except Exception as report_error:  # the run's own error is the one to raise
                print(f"zoo-train: could not record the failure: {report_error}", file=sys.stderr)
        raise
    finally:
        held.close()
        if not joined:
            # nothing may hold the DDP wrapper when the group goes (see teardown): not this frame, nor, on
            # the way out of an error, the finished frames its traceback keeps
            wrapper = loop = None
            if sys.exc_info()[2] is not None:
                traceback.clear_frames(sys.exc_info()[2])
            teardown()


def adapt(cfg: DictConfig, model: nn.Module, *, objective, data) -> int:
    """Apply the ``adapter`` (what trains), then let the objective add what it needs (a task head,
    which trains); returns the number of trainable parameters."""
    from zoo.finetune.adapters import FullFineTuning, count_trainable

    adapter = build_node(cfg.adapter, "adapter") if "adapter" in cfg else FullFineTuning()
    adapter.apply(model)
    objective.prepare(model, data=data)
    if getattr(data, "n_classes", None) and "n_classes" in cfg.objective:  # recorded, so the checkpoint rebuilds its head
        with open_dict(cfg):
            cfg.objective.n_classes = data.n_classes
    trainable = count_trainable(model)
    if not trainable:
        raise ConfigError("adapter", OmegaConf.select(cfg, "adapter._target_"), f"something to train, but {adapter!r} froze every parameter and objective={objective.name} adds none")
    return trainable

def _finish(logger, result: RunResult, info: RunInfo, out_dir: Path, *, failed: bool) -> None:
    """``metrics.json`` into the run folder, the summary into the logger, and the logger closed."""
    record = {"job": info.job_num, "name": info.name, **result.metrics, "choices": info.choices, "overrides": info.overrides}
    if logger is not None:
        record.update(logger.info)
        logger.summary({k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str))})
        logger.finish(failed=failed)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt.write_atomic(out_dir / METRICS_FILE, json.dumps(record, indent=2, default=str) + "\n")
