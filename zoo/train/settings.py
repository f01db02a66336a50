"""The ``trainer`` config group as a typed, validated record.

The loop reads its knobs from here rather than from the raw config, so a typo or a bad value fails
with the key's name before anything is built.
"""

from dataclasses import dataclass, field, fields

from omegaconf import DictConfig, OmegaConf

from zoo.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class SampleSettings:
    """The text generated at the end of a language-model run.

    Args:
        prompt: the text the sample continues.
        max_new_tokens: tokens to generate (0: no sample).
        temperature: 0 for greedy decoding.
        top_k: sample among the ``top_k`` likeliest tokens; ``None``: all.
        heal: back the prompt off its last token and have the sample write it again
            (:mod:`zoo.generation.healing`): ``"def "`` then continues with a name, not digits.
    """

    prompt: str = "def "
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 50
    heal: bool = True


@dataclass(frozen=True)
class Settings:
    """How a run trains; every field is ``trainer.<field>`` in the config (conf/trainer/default.yaml).

    Sizes: ``batch_size`` sequences of ``seq_len`` tokens per optimizer step, over all ranks and
    accumulation steps; each rank runs ``grad_accum`` micro-batches of ``batch_size / (world * grad_accum)``.
    """

    max_steps: int = 600
    batch_size: int = 16
    grad_accum: int = 1
    seq_len: int = 256
    eval_every: int = 100
    eval_batches: int | None = 16
    final_eval_batches: int | None = None
    eval_batch_size: int | None = None
    log_every: int = 10
    ckpt_every: int = 0
    keep_last: int = 1
    resume: str | None = None
    init_from: str | None = None
    init_strict: bool = True
    overwrite: bool = False
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    strategy: str = "auto"
    activation_checkpointing: bool = False
    quiet: bool | None = None
    threads: int | None = None
    keep_freed_memory: bool = True
    sample: SampleSettings = field(default_factory=SampleSettings)

    def __post_init__(self) -> None:
        positive = ("max_steps", "batch_size", "grad_accum", "seq_len")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"trainer.{key}", getattr(self, key), "> 0")
        for key in ("eval_every", "log_every", "ckpt_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"trainer.{key}", getattr(self, key), ">= 0 (0: never)")
        for key in ("eval_batches", "final_eval_batches", "eval_batch_size", "threads"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"trainer.{key}", value, "> 0, or null")
        if self.precision not in PRECISIONS:
            raise ConfigError("trainer.precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        for key in ("max_new_tokens", "temperature"):
            if getattr(self.sample, key) < 0:
                raise ConfigError(f"trainer.sample.{key}", getattr(self.sample, key), ">= 0")

    @classmethod
    def from_config(cls, node: DictConfig | dict) -> "Settings":
        """Settings from ``cfg.trainer``; an unknown key is a :class:`ConfigError` naming it."""
        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(f"trainer.{key}", values[key], f"not a trainer setting; known: {', '.join(sorted(known))}")
        sample = values.pop("sample", None) or {}
        sample_known = {f.name for f in fields(SampleSettings)}
        for key in sample:
            if key not in sample_known:
                raise ConfigError(f"trainer.sample.{key}", sample[key], f"not a sample setting; known: {', '.join(sorted(sample_known))}")
        return cls(**values, sample=SampleSettings(**sample))

    def configure_process(self) -> bool:
        """Set the process-wide knobs: torch's CPU threads and glibc keeping freed memory
        (:func:`zoo.malloc.keep_freed_memory`); returns whether freed memory is kept."""
        import torch

        from zoo.malloc import keep_freed_memory

        if self.threads:
            torch.set_num_threads(self.threads)
        return self.keep_freed_memory and keep_freed_memory()

    def micro_batch(self, world: int) -> int:
        """Rows per micro-batch on one rank."""
        per_step = world * self.grad_accum
        if self.batch_size % per_step:
            raise ConfigError(
                "trainer.batch_size", self.batch_size, f"a multiple of world size x trainer.grad_accum = {world} x {self.grad_accum}"
            )
        return self.batch_size // per_step
