"""Where a benchmarked variant's weights start: from scratch, or from ``trainer.init_from``.

``zoo-bench trainer.init_from=<source> ...`` benchmarks fine-tuning: every seed of every variant starts
from the source's weights with a fresh optimizer and schedule, as ``zoo-train`` does
(:mod:`zoo.finetune.pretrained`). The variant's model is the source's composition with the model keys
its overrides name on top (``model=prefix``: U-PaLM's causal -> prefix continuation, arXiv:2210.11399),
so the figures measured before training (parameters, FLOPs, speed) are of the model that trains.
:func:`start` rebases the config once, before those figures; each seed's training run rebases it
again from the same overrides (a no-op) and loads the weights.

The source may name the seed (``trainer.init_from: runs/base/seed${trainer.seed}``): each seed then
continues its own pretrained model, and the seeds' spread includes the pretraining's.
"""

import copy
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from zoo.errors import ConfigError

SCRATCH = "scratch"


def start(cfg: DictConfig, *, overrides: Sequence[str], seed: int, match: bool, mqar: bool, extrapolation: bool) -> dict:
    """Rebase ``cfg.model`` (in place) on ``trainer.init_from`` when it is set; what the variant starts from.

    Args:
        cfg: the job's composed ``bench`` config.
        overrides: the job's overrides (the model keys among them are kept over the source's).
        seed: the seed the source is opened for (a source may name it; the composition is every seed's).
        match, mqar, extrapolation: whether ``bench.match``, ``bench.mqar`` and ``bench.extrapolation`` are on.

    Returns: ``{"from": "scratch"}``, or the source's folder and kind, the adapter, and the source's
    vocabulary (the run takes the source's tokenizer).

    Raises: :class:`ConfigError`, before any heavy work, for what cannot start from fixed weights: size
    matching (the weights fix the size), MQAR (a fresh model on the task's vocabulary), extrapolation
    of a run that checkpoints only its adapter.
    """
    from zoo.finetune.pretrained import KEY, open_pretrained

    source = OmegaConf.select(_for_seed(cfg, seed), KEY, default=None)
    if not source:
        return {"from": SCRATCH, "adapter": adapter_name(cfg)}
    refuse(cfg, match=match, mqar=mqar, extrapolation=extrapolation)
    pretrained = open_pretrained(source)
    pretrained.rebase(cfg, overrides)
    vocab = pretrained.tokenizer.vocab_size if pretrained.tokenizer is not None else int(cfg.model.vocab_size)
    with open_dict(cfg):
        cfg.model.vocab_size = vocab
    return {"from": str(source), "kind": pretrained.kind, "adapter": adapter_name(cfg), "vocab_size": vocab}


def adapter_name(cfg: DictConfig) -> str:
    """The adapter's class name (``FullFineTuning``, ``LoRA``, ``Frozen``)."""
    return str(OmegaConf.select(cfg, "adapter._target_", default="") or "").rsplit(".", 1)[-1] or "FullFineTuning"


def refuse(cfg: DictConfig, *, match: bool, mqar: bool, extrapolation: bool) -> None:
    """A :class:`ConfigError` for a bench setting that cannot work on a model started from fixed weights."""
    from zoo.finetune.pretrained import KEY

    if match:
        raise ConfigError("bench.match.by", OmegaConf.select(cfg, "bench.match.by"), f"null with {KEY}: the pretrained weights fix the model's size")
    if mqar:
        raise ConfigError("bench.mqar.enabled", True, f"false with {KEY}: MQAR trains a fresh model on the task's own vocabulary")
    if extrapolation and adapter_name(cfg) != "FullFineTuning":
        raise ConfigError("bench.extrapolation.enabled", True, f"false with adapter={adapter_name(cfg)}: its checkpoint holds only the adapter")


def pretrain(cfg: DictConfig, *, seeds: Sequence[int], overrides: Sequence[str], extra: Sequence[str], seed_offset: int, out_dir: Path) -> dict:
    """Pretrain one model per seed and point ``cfg``'s ``trainer.init_from`` at them (per seed).

    Seed ``s`` pretrains, under seed ``s + seed_offset``, the job's composition with ``extra`` on top (an
    override of the job's own key replaces it: ``model=causal`` the job's ``model=prefix``) into
    ``out_dir/seed<s>``; the job's run of seed ``s`` then starts from it.

    Returns: the record for the rows: the overrides, steps and tokens of the pretraining, each seed's status.
    """
    from zoo.bench.quality import train_seed
    from zoo.config import compose_aside
    from zoo.finetune.pretrained import KEY

    if OmegaConf.select(cfg, KEY, default=None):
        raise ConfigError("bench.pretrain.overrides", list(extra), f"empty with {KEY}: the pretraining gives the initial weights")
    replaced = {o.split("=", 1)[0].lstrip("+~") for o in extra}
    job = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in replaced]
    stage = compose_aside([*job, *extra])
    runs = {seed: train_seed(stage, seed=seed + seed_offset, out_dir=out_dir / f"seed{seed}", overrides=[*job, *extra]) for seed in seeds}
    failed = {seed: row.get("error") or row["status"] for seed, row in runs.items() if row["status"] != "ok"}
    if failed:
        raise RuntimeError(f"pretraining failed: {failed}")
    with open_dict(cfg):
        OmegaConf.update(cfg, KEY, str(out_dir) + "/seed${trainer.seed}")
    steps = int(stage.trainer.max_steps)
    return {
        "overrides": list(extra), "steps": steps, "tokens": steps * int(stage.trainer.batch_size) * int(stage.trainer.seq_len),
        "seeds": {seed: seed + seed_offset for seed in seeds}, "val_loss": {seed: row.get("val_loss") for seed, row in runs.items()},
    }  # fmt: skip


def _for_seed(cfg: DictConfig, seed: int) -> DictConfig:
    run = copy.deepcopy(cfg)
    with open_dict(run):
        run.trainer.seed = seed
    return run


def describe(record: dict | None, inits: Sequence[dict | None] = (), pretrained: dict | None = None) -> str:
    """One line for a report: ``scratch``, or the source and what loading it did (the seeds' ``init``),
    or the pretraining run each seed continued."""
    if not record or record.get("from") == SCRATCH:
        return SCRATCH + (f" ({record['adapter']})" if record and record.get("adapter") not in (None, "FullFineTuning") else "")
    loads = sorted({_counts(i) for i in inits if i})
    how = f"{record.get('kind')}, adapter {record.get('adapter')}{'; ' + '; '.join(loads) if loads else ''}"
    if pretrained:
        return f"its own pretraining per seed ({' '.join(pretrained['overrides'])}: {pretrained['steps']} steps, {pretrained['tokens']:,} tokens; {how})"
    sources = sorted({str(i["from"]) for i in inits if i}) or [record["from"]]
    return f"{', '.join(sources)} ({how})"


def _counts(init: dict) -> str:
    parts = [f"{init.get('loaded', 0)} tensors loaded"]
    parts += [f"{init[k]} {k}" for k in ("new", "dropped", "grown", "reshaped") if init.get(k)]
    return ", ".join(parts)
