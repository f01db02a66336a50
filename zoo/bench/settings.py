"""The ``bench`` node of ``conf/bench.yaml`` as typed, validated records.

An unknown key or a bad value fails with its dotted name (``bench.speed.stpes``) before any model is
built. Where a benchmark trains, it trains with the ``trainer``, ``optim``, ``sched`` and ``data``
groups as ``zoo-train`` would; device, threads and ``torch.compile`` come from ``trainer`` too.
"""

import dataclasses
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from zoo.bench.budget import MATCH_BY, Budget
from zoo.errors import ConfigError


@dataclass(frozen=True)
class SpeedSettings:
    """Speed figures of each variant (:mod:`zoo.bench.speed`).

    Args:
        enabled: measure speed at all.
        batch: sequences per training step and prefill.
        fill_gpu: on CUDA, double ``batch`` while a training step fits (a fill-the-GPU batch); off CUDA, ignored.
        seq_len: tokens per sequence; ``None``: ``trainer.seq_len``.
        steps: timed calls per figure (the median is kept).
        warmup: untimed calls first (``torch.compile`` compiles here).
        decode_batch, prompt_len, new_tokens: the cached greedy decode.
        seq_lens: lengths of the scaling curve (empty: none), at ``tokens_per_batch`` tokens a batch.
        tokens_per_batch: batch size times length in the scaling curve.
        matmul_size: side of the square matmul whose rate is the MFU's denominator; ``None``: the fastest of a few sizes per device.
    """

    enabled: bool = True
    batch: int = 8
    fill_gpu: bool = True
    seq_len: int | None = None
    steps: int = 5
    warmup: int = 2
    decode_batch: int = 1
    prompt_len: int = 32
    new_tokens: int = 64
    seq_lens: tuple[int, ...] = ()
    tokens_per_batch: int = 4096
    matmul_size: int | None = None


@dataclass(frozen=True)
class ExtrapolationSettings:
    """Validation loss at multiples of the training length (Press et al. 2021, arXiv:2108.12409).

    Args:
        enabled: evaluate it.
        factors: multiples of ``trainer.seq_len``.
        eval_tokens: about this many tokens evaluated per length.
    """

    enabled: bool = False
    factors: tuple[float, ...] = (1, 2, 4, 8)
    eval_tokens: int = 16384


@dataclass(frozen=True)
class ContinuationSettings:
    """A score that compares across objectives (:meth:`zoo.objectives.base.Objective.continuation`): the
    loss of each validation row's end given its start, read as each variant's objective reads a text
    whose end is missing, so a causal LM, a prefix LM, GLM's blank infilling and T5's span corruption
    predict the same tokens from the same context.

    Args:
        enabled: score it, and pair the variants on it rather than on their own objectives' losses.
        prefix: the share of each row given as context; the rest is predicted.
        batches: validation batches scored (``trainer.batch_size`` rows of ``trainer.seq_len + 1`` tokens,
            the same rows for every variant).
    """

    enabled: bool = False
    prefix: float = 0.5
    batches: int = 16


@dataclass(frozen=True)
class MQARSettings:
    """Associative recall (Zoology, arXiv:2312.04927): one fresh training run per case and seed.

    Args:
        enabled: run it.
        cases: ``[seq_len, n_pairs]`` pairs.
        vocab_size: the task's vocabulary (keys in the lower half, values in the upper).
        steps: training steps per case; ``None``: ``trainer.max_steps``.
    """

    enabled: bool = False
    cases: tuple[tuple[int, int], ...] = ((64, 4), (128, 8))
    vocab_size: int = 256
    steps: int | None = None


@dataclass(frozen=True)
class MatchSettings:
    """Size matching (:func:`zoo.bench.budget.match_knob`).

    Args:
        by: ``params``, ``active_params``, ``flops`` or ``None`` (no matching).
        knob: the model key solved for, relative to ``model``.
        reference: overrides composing the reference (added to the run's own), e.g. ``[model/ffn=gelu]``.
    """

    by: str | None = None
    knob: str = "ffn.hidden_dim"
    reference: tuple[str, ...] = ()


@dataclass(frozen=True)
class LRSettings:
    """A learning rate per variant (:mod:`zoo.bench.lr`).

    Args:
        grid: learning rates to screen (3-5 log-spaced values); empty: every variant at ``optim.lr``.
        screen_steps: steps of each screening run; ``None``: the variant's full budget.
        screen_seed: the seed the screening runs train with.
    """

    grid: tuple[float, ...] = ()
    screen_steps: int | None = None
    screen_seed: int = 0


@dataclass(frozen=True)
class PretrainSettings:
    """A pretraining stage before each seed's run (:func:`zoo.bench.start.pretrain`): U-PaLM's recipe,
    a causal decoder continued as a prefix decoder (arXiv:2210.11399), benchmarked in one job.

    Args:
        overrides: the overrides that turn the job's composition into the pretraining run's, e.g.
            ``[model=causal, objective=causal_lm, trainer.max_steps=600]``; empty: no pretraining.
        seed_offset: seed ``s`` pretrains under seed ``s + seed_offset``: its own initial weights and batch
            order, so the run that continues it does not begin on the batches it was pretrained on.
    """

    overrides: tuple[str, ...] = ()
    seed_offset: int = 100


@dataclass(frozen=True)
class BenchSettings:
    """Everything ``bench.*`` sets.

    Args:
        seeds: training seeds of the quality figures (>= 3 for an interval worth the name).
        quality: train and evaluate at all (off: speed and FLOPs only).
        speed, extrapolation, continuation, mqar, match, budget, lr: the sections above.
        peers: run the side-by-side peer comparison instead of a variant (``study=peers``); its
            keys are :func:`zoo.bench.peers.run`'s.
        expectation: the published finding a study reproduces, printed with its report.
        stack_seeds: train the seeds of a variant together, stacked under ``vmap`` (:mod:`zoo.bench.seeds`),
            where the composition allows it; off: one seed at a time through the training loop.
        pretrain: a pretraining run per seed whose weights the seed's run starts from (``trainer.init_from``).
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    quality: bool = True
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    extrapolation: ExtrapolationSettings = field(default_factory=ExtrapolationSettings)
    continuation: ContinuationSettings = field(default_factory=ContinuationSettings)
    mqar: MQARSettings = field(default_factory=MQARSettings)
    match: MatchSettings = field(default_factory=MatchSettings)
    budget: Budget = field(default_factory=Budget)
    lr: LRSettings = field(default_factory=LRSettings)
    peers: dict | None = None
    expectation: str | None = None
    stack_seeds: bool = True
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)

    def __post_init__(self) -> None:
        if self.quality and not self.seeds:
            raise ConfigError("bench.seeds", list(self.seeds), "at least one seed (three or more for a confidence interval)")
        if self.match.by is not None and self.match.by not in MATCH_BY:
            raise ConfigError("bench.match.by", self.match.by, f"one of {', '.join(MATCH_BY)}, or null")
        for key, value in (("speed.batch", self.speed.batch), ("speed.steps", self.speed.steps), ("extrapolation.eval_tokens", self.extrapolation.eval_tokens)):
            if value <= 0:
                raise ConfigError(f"bench.{key}", value, "> 0")
        if any(float(x) <= 0 for x in self.lr.grid):
            raise ConfigError("bench.lr.grid", list(self.lr.grid), "positive learning rates, e.g. [1e-3, 2e-3, 4e-3]")
        if self.lr.screen_steps is not None and self.lr.screen_steps <= 0:
            raise ConfigError("bench.lr.screen_steps", self.lr.screen_steps, "> 0, or null (the full budget)")
        if not 0 < self.continuation.prefix < 1:
            raise ConfigError("bench.continuation.prefix", self.continuation.prefix, "a share of each row in (0, 1), e.g. 0.5")
        if self.continuation.batches <= 0:
            raise ConfigError("bench.continuation.batches", self.continuation.batches, "> 0")
        for case in self.mqar.cases:
            if len(case) != 2:
                raise ConfigError("bench.mqar.cases", list(case), "pairs [seq_len, n_pairs]")

    @classmethod
    def from_config(cls, node: DictConfig | dict | None) -> "BenchSettings":
        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
        return _build(cls, values, "bench")


def _build(cls, values: dict, prefix: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{prefix}.{key}", value, f"not a setting; known: {', '.join(sorted(known))}")
        default = known[key].default_factory() if known[key].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = _build(type(default), value, f"{prefix}.{key}")
        elif isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[key] = value
    return cls(**kwargs)
