"""One run's optimisation state and the steps that move it: :class:`Loop`, which :func:`zoo.train.loop.train`
builds once the run's parts are ready.

Per optimizer step: one global batch of ``trainer.batch_size`` rows from the resumable loader; each
rank takes its share and runs ``trainer.grad_accum`` micro-batches; gradients are those of the loss
summed over every target token of the step, divided by their number (so two ranks give what one
rank with the same global batch gives, whatever the masks); then clipping, the schedule's learning
rate, and AdamW. Evaluation, checkpoints and logging follow their own periods.
"""

import json
import math
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from zoo.config import resolved_config
from zoo.objectives.base import Objective
from zoo.train import checkpoint as ckpt
from zoo.train.components import Components
from zoo.train.distributed import (
    Dist, ModelView, all_gather_objects, all_reduce_sum, barrier, full_state, full_tensor, no_sync, sharded,
)  # fmt: skip
from zoo.train.metrics import compressor_metrics, count_parameters, evaluate, flops_per_token, routing_metrics, sums_of, summarise
from zoo.train.optim import Schedule
from zoo.train.sample import can_sample, sample
from zoo.train.settings import Settings
from zoo.train.sweep import RunInfo

LOG_FILE = "log.jsonl"


#: a run's mixed-precision context: ``with autocast(): ...``
Autocast = Callable[[], AbstractContextManager]


class OptimizerConfig(Protocol):
    """The ``optim`` option (:mod:`zoo.train.optim`): it builds the optimizer and holds the peak rate and clipping."""

    lr: float
    grad_clip: float | None

    def build(self, model: nn.Module) -> torch.optim.Optimizer: ...


@dataclass
class RunResult:
    """What a run leaves: its status, final numbers, per-step training losses and where its files are."""

    status: str = "running"
    metrics: dict = field(default_factory=dict)
    history: list[float] = field(default_factory=list)
    out_dir: Path | None = None
    checkpoint: Path | None = None


def forever(loader):
    """The loader's batches, epoch after epoch (the loader keeps the position)."""
    while True:
        yield from loader


@dataclass
class StepContext:
    """What every training step of one run uses, fixed for the run (built by :meth:`Loop.step_context`).

    Args:
        dist: this process's place in the process group.
        autocast: the run's mixed-precision context.
        wrapper: the model as the backward pass sees it (DDP across ranks).
        view: the wrapper with the bare model's attributes, as objectives call it.
        objective: the training objective (compiled with ``trainer.compile``).
        params: the parameters that train.
    """

    dist: Dist
    autocast: Autocast
    wrapper: nn.Module
    view: ModelView
    objective: Callable
    params: list[nn.Parameter]


class Loop:
    """One run's optimisation state and the steps that move it (built by :func:`train`)."""

    def __init__(
        self, cfg: DictConfig, *, settings: Settings, parts: Components, optimizer: torch.optim.Optimizer, optim: OptimizerConfig,
        schedule: Schedule, objective: Objective, out_dir: Path,
    ) -> None:  # fmt: skip
        self.cfg, self.settings, self.parts, self.out_dir = cfg, settings, parts, out_dir
        self.optimizer, self.optim, self.schedule, self.objective = optimizer, optim, schedule, objective
        self.step, self.tokens_seen, self.train_time = 0, 0, 0.0

    def run(self, wrapper: nn.Module, *, dist: Dist, autocast: Autocast, logger, info: RunInfo, result: RunResult, resume: ckpt.Checkpoint | None) -> None:
        """Train from the step ``resume`` reached (or 0) to ``trainer.max_steps``, then evaluate, save and sample;
        ``wrapper`` is the model made data-parallel (DDP, FSDP; the model itself on one process)."""
        s = self.settings
        if resume is not None:
            self.step, self.tokens_seen = resume.step, int(resume.state["tokens_seen"])
            self.train_time = float(resume.state.get("train_time", 0.0))
        quiet = info.multirun if s.quiet is None else s.quiet
        self.record_costs(result, name=info.name, main=dist.main, announce=dist.main and not quiet)
        self.ctx = self.step_context(wrapper, dist=dist, autocast=autocast)
        if self.train_steps(logger=logger, result=result, quiet=quiet):
            self.finish(logger=logger, result=result, quiet=quiet)

    def record_costs(self, result: RunResult, *, name: str, main: bool, announce: bool) -> None:
        """Parameters and FLOPs per token (the model's own count, as zoo-bench reports it), and the run's data."""
        s, model = self.settings, self.parts.model
        counts = count_parameters(model)
        result.metrics.update(
            counts, flops_per_token=flops_per_token(model, seq_len=s.seq_len), max_steps=s.max_steps,
            corpus_fingerprint=_fingerprint(self.parts.data), tokenizer=getattr(self.parts.tokenizer, "id", None),
            vocab_size=self.cfg.model.vocab_size,
        )  # fmt: skip
        if main and self.objective.predicts_text:  # the compressors' bits per byte on this split: a fixed reference for the model's
            result.metrics.update(compressor_metrics(self.parts.data))
        if announce:
            trainable = result.metrics.get("parameters_trainable", counts["parameters"])
            counts_text = f"{counts['parameters']:,} parameters" + (f" ({trainable:,} trainable)" if trainable != counts["parameters"] else "")
            print(f"zoo-train: {name}: {counts_text}, {s.max_steps} steps of {s.batch_size} x {s.seq_len} tokens", file=sys.stderr)

    def step_context(self, wrapper: nn.Module, *, dist: Dist, autocast: Autocast) -> "StepContext":
        """What every step of this run uses: the data-parallel wrapper, the objective (compiled: the
        forward and the loss are one graph, and the cross-entropy over the vocabulary fuses into a
        kernel or two, about a tenth of a small model's step eager)."""
        s, model = self.settings, self.parts.model
        return StepContext(
            dist=dist, autocast=autocast, wrapper=wrapper, view=ModelView(wrapper, model),
            objective=torch.compile(self.objective) if s.compile else self.objective,
            params=[p for p in model.parameters() if p.requires_grad],
        )  # fmt: skip

    def train_steps(self, *, logger, result: RunResult, quiet: bool) -> bool:
        """Steps until ``trainer.max_steps``, logging, evaluating and saving on their periods; ``False``
        when the loss diverged (the result then says so)."""
        s, dist = self.settings, self.ctx.dist
        bar = _progress(s, initial=self.step, enabled=dist.main and not quiet)
        batches = forever(self.parts.train_loader)
        try:
            while self.step < s.max_steps:
                t0 = time.perf_counter()
                loss, grad_norm, lr = self.train_step(next(batches))
                self.train_time += time.perf_counter() - t0
                self.step += 1
                self.tokens_seen += s.batch_size * s.seq_len
                result.history.append(loss)
                if not math.isfinite(loss) or not math.isfinite(grad_norm):
                    self._diverged(result, loss=loss, grad_norm=grad_norm, dist=dist)
                    return False
                self.after_step(loss=loss, grad_norm=grad_norm, lr=lr, logger=logger, bar=bar, result=result, quiet=quiet)
        finally:
            if bar is not None:
                bar.close()
        return True

    def after_step(self, *, loss: float, grad_norm: float, lr: float, logger, bar, result: RunResult, quiet: bool) -> None:
        """The progress bar, and the log, evaluation and checkpoint when their period comes."""
        s, dist = self.settings, self.ctx.dist
        tokens_per_s = self.tokens_seen / max(self.train_time, 1e-9)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
        if dist.main and s.log_every and self.step % s.log_every == 0:
            routing = {f"train/{k}": v for k, v in routing_metrics(self.parts.model).items()}  # of the step's last forward
            self._log(logger, {"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm, "train/tokens_per_s": tokens_per_s, "train/tokens": self.tokens_seen, **routing})
        if s.eval_every and self.step % s.eval_every == 0 and self.step < s.max_steps:
            values = self.evaluate(dist=dist, autocast=self.ctx.autocast, max_batches=s.eval_batches)
            self._report("val", values, logger=logger, bar=bar, quiet=quiet or not dist.main)
        if s.ckpt_every and self.step % s.ckpt_every == 0 and self.step < s.max_steps:
            result.checkpoint = self.save(dist)

    def finish(self, *, logger, result: RunResult, quiet: bool) -> None:
        """The final evaluation and checkpoint, a sample of text, and the run's figures."""
        s, dist, model = self.settings, self.ctx.dist, self.parts.model
        final = self.evaluate(dist=dist, autocast=self.ctx.autocast, max_batches=s.final_eval_batches)
        self._report("val", final, logger=logger, bar=None, quiet=True)
        result.checkpoint = self.save(dist)
        text = None
        # a sharded model runs a forward only with every rank taking part: no sample from rank 0 alone
        if dist.main and not sharded(model) and can_sample(model, self.parts.tokenizer) and s.sample.max_new_tokens:
            text = sample(model, self.parts.tokenizer, settings=s.sample, seed=s.seed, objective=self.objective)
        if dist.main and not quiet:
            print(f"final (step {self.step}): {_describe(final)}{_compared(result.metrics)}; {self.tokens_seen / max(self.train_time, 1e-9):,.0f} tokens/s")
            if text is not None:
                print(f"sample:\n{text}")
        result.status = "ok"
        result.metrics.update(
            {f"val_{k}": v for k, v in final.items()}, train_loss=result.history[-1] if result.history else None, steps=self.step,
            tokens_seen=self.tokens_seen, tokens_per_s=self.tokens_seen / self.train_time if self.train_time else None, sample=text,
            checkpoint=str(result.checkpoint),
        )  # fmt: skip

    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[float, float, float]:
        """One optimizer step on a global batch; returns its loss, the gradient norm before clipping, the learning rate."""
        s, c = self.settings, self.ctx
        micro = s.micro_batch(c.dist.world)
        per_rank = micro * s.grad_accum
        total = torch.zeros(5, dtype=torch.float64)
        for i in range(s.grad_accum):
            start = c.dist.rank * per_rank + i * micro
            rows = {k: v[start : start + micro].to(c.dist.device, non_blocking=True) for k, v in batch.items()}
            last = i == s.grad_accum - 1
            with nullcontext() if last or c.dist.world == 1 else no_sync(c.wrapper):
                with c.autocast():
                    loss, metrics = c.objective(c.view, rows)
                # summed over tokens here, divided by the step's token count below
                (loss * metrics["n_tokens"]).backward()
            total += sums_of(metrics)
        total = all_reduce_sum(total.to(c.dist.device), c.dist).cpu()
        scale = c.dist.world / max(float(total[1]), 1.0)  # DDP averaged over ranks; undo it, divide by tokens
        for p in c.params:
            if p.grad is not None:
                p.grad.mul_(scale)
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(c.params, self.optim.grad_clip or float("inf")))
        lr = self.schedule.apply(self.optimizer, step=self.step, max_steps=s.max_steps, lr=self.optim.lr)
        loss_value = summarise(total)["loss"]
        if math.isfinite(loss_value) and math.isfinite(float(grad_norm)):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, float(grad_norm), lr

    def evaluate(self, *, dist: Dist, autocast, max_batches: int | None) -> dict[str, float]:
        loader = self.parts.val_loader
        loader.reset()
        objective = self.parts.make_objective()
        values = evaluate(self.parts.model, loader, objective=objective, dist=dist, max_batches=max_batches, autocast=autocast)
        return {**values, **objective.summary()}

    def save(self, dist: Dist) -> Path | None:
        """A checkpoint of this step (rank 0 writes it; every rank contributes its RNG state)."""
        states = all_gather_objects({k: v.tolist() for k, v in ckpt.rng_tensors().items()}, dist)
        weights, optimizer = full_state(self.parts.model, self.optimizer)  # every rank: a sharded model gathers
        training = {name for name, p in self.parts.model.named_parameters() if p.requires_grad}
        only_trainable = len(training) < len(dict(self.parts.model.named_parameters()))  # LoRA, a probe: the rest is init_from's
        if only_trainable:
            weights = {name: value for name, value in weights.items() if name in training}
        path = None
        if dist.main:
            rng = {f"rank{r}.{k}": torch.tensor(v, dtype=torch.uint8) for r, state in enumerate(states) for k, v in state.items()}
            state = {
                "tokens_seen": self.tokens_seen, "loader": self.parts.train_loader.state_dict(), "objective": self.objective.state_dict(),
                "train_time": self.train_time, "world": dist.world, "strategy": "fsdp" if sharded(self.parts.model) else "ddp",
            }  # fmt: skip
            path = ckpt.save(
                self.out_dir / "checkpoints", step=self.step, weights=weights, optimizer=optimizer, state=state, rng=rng,
                config_yaml=OmegaConf.to_yaml(resolved_config(self.cfg)), tokenizer=self.parts.tokenizer, keep_last=self.settings.keep_last,
                only_trainable=only_trainable,
            )  # fmt: skip
        barrier(dist)
        return path

    def _diverged(self, result: RunResult, *, loss: float, grad_norm: float, dist: Dist) -> None:
        last = ckpt.find(self.out_dir / "checkpoints").path if (self.out_dir / "checkpoints" / ckpt.LATEST).exists() else None
        message = (
            f"the loss became non-finite at step {self.step} (loss {loss}, gradient norm {grad_norm}); stopped without "
            f"saving. Last good checkpoint: {last or 'none'}. Try a lower optim.lr or a longer sched.warmup_steps."
        )
        if dist.main:
            print(f"zoo-train: {message}", file=sys.stderr)
        result.status = "diverged"
        result.checkpoint = last
        result.metrics.update(error=message, steps=self.step, checkpoint=str(last) if last else None)

    def _log(self, logger, metrics: dict[str, float]) -> None:
        """To the logger, and a line of ``log.jsonl`` in the run folder (the record without W&B)."""
        if logger is not None:
            logger.log(metrics, step=self.step)
        with (self.out_dir / LOG_FILE).open("a") as f:
            f.write(json.dumps({"step": self.step, **metrics}) + "\n")

    def _report(self, prefix: str, values: dict[str, float], *, logger, bar, quiet: bool) -> None:
        if logger is not None:
            self._log(logger, {f"{prefix}/{k}": v for k, v in values.items()})
        if not quiet:
            text = f"step {self.step}: {prefix} {_describe(values)}"
            (partial(bar.write, file=sys.stderr) if bar is not None else partial(print, file=sys.stderr))(text)


def _describe(values: dict[str, float]) -> str:
    text = f"loss {values['loss']:.4f}, ppl {values['ppl']:.2f}, accuracy {values['accuracy']:.3f}"
    return text + (f", bits per byte {values['bpb']:.4f}" if "bpb" in values else "")


def _compared(metrics: dict) -> str:
    """The compressors' bits per byte on the same validation split, when the run has them."""
    if "val_lzma_bpb" not in metrics:
        return ""
    return f" (zlib {metrics['val_zlib_bpb']:.4f}, lzma {metrics['val_lzma_bpb']:.4f} given the training split)"


def _progress(settings: Settings, *, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=settings.max_steps, initial=initial, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)


def _fingerprint(data) -> str | None:
    corpus = getattr(data, "corpus", None)
    return getattr(corpus, "fingerprint", None) if corpus is not None else f"{type(data).__name__}"
