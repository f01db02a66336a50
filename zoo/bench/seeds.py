"""Several seeds of one variant trained together: the seeds' parameters stacked, one forward under ``vmap``.

At the studies' size (dim 128, 4 layers, 16 x 128 tokens a step) a CPU step is bound by the cost of
launching operators, not by arithmetic: ``S`` seeds stacked along a new leading dimension run each
operator once on ``S`` times the data (``torch.func.stack_module_state`` + ``functional_call`` under
``torch.func.vmap``). Each seed keeps what :func:`zoo.train.train` would give it: its own initial
weights (built under its seed), its own batch stream, the same AdamW update (elementwise, so stacking
does not mix seeds), the same schedule, and its own gradient-norm clipping. Its losses equal a
separate run's to float tolerance (batched matmuls sum in another order); tests/bench/test_seeds.py
holds it to that.

A stacked member may also have its own peak learning rate: a learning-rate screen
(:mod:`zoo.bench.lr`) trains one seed at every rate of its grid together, for the price of about one
run. AdamW is elementwise, so :func:`adamw_step` applies it to the stacked tensors with a learning rate
per member; it is torch's AdamW, step for step.

It covers what a study trains: a causal LM with ``objective=causal_lm`` on one process, from scratch
and without an adapter, without gradient accumulation, compilation, MoE auxiliary losses or
activation checkpointing;
:func:`applies` says when, and :func:`zoo.bench.run.run_variant` falls back to one seed at a time
otherwise.
"""

import copy
import math
import time
import warnings
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from zoo.bench.quality import convergence, curve, data_record, per_batch_eval, seed_config
from zoo.objectives.base import documents, masked_cross_entropy


def applies(cfg: DictConfig) -> str | None:
    """``None`` when the seeds of ``cfg`` can train stacked; otherwise why not (for the report)."""
    from hydra.utils import get_class

    from zoo.train import Settings

    s = Settings.from_config(cfg.trainer)
    target = str(cfg.objective._target_)
    if not target.endswith("CausalLMObjective"):
        return f"objective {target}"
    if get_class(str(cfg.model._target_)).arch != "causal":
        return "not a causal decoder"
    if s.grad_accum != 1 or s.compile or s.activation_checkpointing or s.resume:
        return "grad_accum, compile, activation checkpointing or resume"
    if s.init_from or not str(cfg.adapter._target_).endswith("FullFineTuning"):
        return "initial weights or an adapter (the training loop loads and applies them)"
    if "experts" in str(cfg.model.ffn.get("_target_", "")).lower() or cfg.model.ffn.get("n_experts") is not None:
        return "mixture of experts (auxiliary losses)"
    if float(cfg.model.get("dropout", 0.0) or 0.0) > 0:
        return "dropout (per-seed masks)"
    if str(cfg.trainer.device) not in ("auto", "cpu") or torch.cuda.is_available():
        return "not on CPU"
    return None


@dataclass
class Seed:
    """One seed's parts: its built model (initial weights), loaders, objective and settings."""

    seed: int
    run: DictConfig
    parts: object


def fingerprint(data) -> str | None:
    """The corpus's fingerprint (a task: its class name), as the training loop records it."""
    corpus = getattr(data, "corpus", None)
    return getattr(corpus, "fingerprint", None) if corpus is not None else type(data).__name__


def build_seed(cfg: DictConfig, *, seed: int, steps: int | None) -> Seed:
    from zoo.train import Dist, Settings, build

    run = seed_config(cfg, seed=seed, steps=steps)
    settings = Settings.from_config(run.trainer)
    return Seed(seed=seed, run=run, parts=build(run, settings=settings, dist=Dist(), tokenizer=None))


def clip_per_seed(grads: list[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """Clip each seed's gradient (dimension 0 of every tensor) to ``max_norm`` as ``clip_grad_norm_`` would
    clip a single model's; returns the norms before clipping, ``(S,)``."""
    norms = torch.stack([g.reshape(len(g), -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()  # a scalar parameter stacks to (S,)
    if max_norm:
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *([1] * (g.ndim - 1))))
    return norms


def adamw_step(groups: list[dict], state: dict, *, lr: torch.Tensor, step: int, betas: tuple[float, float], eps: float) -> None:
    """One AdamW step (decoupled weight decay, bias-corrected moments, as ``torch.optim.AdamW``) on stacked
    parameters, member ``i`` (dimension 0 of every tensor) at learning rate ``lr[i]``; ``lr``: ``(S,)``.

    ``groups`` are :func:`zoo.train.param_groups`' (``params``, ``weight_decay``); ``state`` holds the two
    moments of each parameter, created on the first step; ``step`` counts from 1.
    """
    b1, b2 = betas
    c1, c2 = 1 - b1**step, math.sqrt(1 - b2**step)
    for group in groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        grads = [p.grad for p in params]
        for p in params:
            if p not in state:
                state[p] = (torch.zeros_like(p), torch.zeros_like(p))
        m = [state[p][0] for p in params]
        v = [state[p][1] for p in params]
        torch._foreach_lerp_(m, grads, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, 1 - b2)
        rates = [lr.view(-1, *([1] * (p.ndim - 1))) for p in params]
        if group["weight_decay"]:
            torch._foreach_mul_(params, [1 - r * group["weight_decay"] for r in rates])
        denom = torch._foreach_add(torch._foreach_div(torch._foreach_sqrt(v), c2), eps)
        torch._foreach_sub_(params, torch._foreach_mul(torch._foreach_div(m, denom), [r / c1 for r in rates]))


def train_together(
    cfg: DictConfig, *, seeds: list[int], steps: int | None = None, lrs: list[float] | None = None
) -> tuple[list[dict], list[nn.Module]]:
    """Train ``seeds`` of ``cfg`` stacked; one result row per seed (as :func:`zoo.bench.quality.train_seed`'s,
    without a checkpoint) and the trained models.

    ``lrs``: a peak learning rate per member (``None``: ``optim.lr`` for all); a seed may then repeat,
    to train one seed at several rates.
    """
    from zoo.train import Settings, build_node, forever, param_groups

    if lrs is not None and len(lrs) != len(seeds):
        raise ValueError(f"one learning rate per stacked member: {len(seeds)} seeds, {len(lrs)} rates")
    runs = [build_seed(cfg, seed=s, steps=steps) for s in seeds]
    first = runs[0]
    settings = Settings.from_config(first.run.trainer)
    settings.configure_process()
    models = [r.parts.model for r in runs]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0])  # the structure functional_call runs; its own values are never used
    names = {id(p): n for n, p in base.named_parameters()}
    optim = build_node(first.run.optim, "optim")
    schedule = build_node(first.run.sched, "sched")
    groups = [
        {**g, "params": [params[names[id(p)]] for p in g["params"]]} for g in param_groups(base, weight_decay=getattr(optim, "weight_decay", 0.0))
    ]
    peaks = torch.tensor([float(optim.lr)] * len(seeds) if lrs is None else [float(x) for x in lrs])
    moments: dict = {}
    stacked = list(params.values())
    streams = [forever(r.parts.train_loader) for r in runs]

    objective = first.parts.make_objective()

    def seed_loss(p: dict, b: dict, batch: dict) -> torch.Tensor:
        # the objective's own inputs: a packed row's documents attend only within themselves, and the
        # loss keeps only what its loss_mask keeps (no target across a boundary; a task's answers)
        x = objective.make_inputs(batch)
        logits = functional_call(base, (p, b), (x["tokens"],), documents(x))
        return masked_cross_entropy(logits, x["targets"], x["loss_mask"])[0]

    batched_loss = vmap(seed_loss, in_dims=(0, 0, 0))
    # SDPA has no vmap rule on CPU yet: torch loops over the seeds for that one operator (measured, in
    # benchmarks/bench_seeds.py, with --kernel eager as the alternative); its warning says nothing new
    warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented the batching rule")
    history: list[list[float]] = [[] for _ in seeds]
    status = ["ok"] * len(seeds)
    t0 = time.perf_counter()
    for step in range(settings.max_steps):
        batches = [next(s) for s in streams]
        losses = batched_loss(params, buffers, {k: torch.stack([b[k] for b in batches]) for k in batches[0]})
        losses.sum().backward()  # seeds share no parameter: the sum's gradient is each seed's own
        norms = clip_per_seed([p.grad for p in stacked], optim.grad_clip)
        values = losses.detach().tolist()
        for i, (value, norm) in enumerate(zip(values, norms.tolist(), strict=True)):
            if status[i] == "ok":
                history[i].append(value)
                if not (math.isfinite(value) and math.isfinite(norm)):
                    status[i] = "diverged"
        if all(s != "ok" for s in status):
            break
        with torch.no_grad():
            factor = schedule.factor(step, max_steps=settings.max_steps)
            adamw_step(groups, moments, lr=peaks * factor, step=step + 1, betas=tuple(optim.betas), eps=optim.eps)
        for p in stacked:
            p.grad = None
    train_time = time.perf_counter() - t0
    tokens_per_step = settings.batch_size * settings.seq_len
    rows = []
    for i, r in enumerate(runs):
        model = models[i]
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(params[name][i])
        row = {"seed": r.seed, "status": status[i], "steps": len(history[i]), "tokens": len(history[i]) * tokens_per_step,
               "train_loss": history[i][-1] if history[i] else None, "vocab_size": int(r.run.model.vocab_size),
               "curve": curve(history[i], tokens_per_step=tokens_per_step), "checkpoint": None, "trained": "stacked",
               "train_s_shared": train_time, "data": data_record(r.run, corpus=fingerprint(r.parts.data), tokenizer=getattr(r.parts.tokenizer, "id", None))}  # fmt: skip
        row["convergence"] = convergence(history[i])
        if status[i] == "ok":
            row |= per_batch_eval(model, r.parts.val_loader, objective=r.parts.make_objective(), max_batches=settings.final_eval_batches)
        else:
            row["error"] = "non-finite loss or gradient norm"
        rows.append(row)
    return rows, models
