"""Budget matching: compare variants at equal parameters, FLOPs or wall time, not at equal config.

Two levers, both recorded in the results:

- **size matching** (:func:`match_knob`): solve one size of the model (``model.ffn.hidden_dim`` by
  default) so that its non-embedding parameters, active parameters (MoE) or forward FLOPs per token
  equal a reference composition's: a gated FFN gets the GeLU MLP's parameters (Shazeer 2020,
  arXiv:2002.05202), MQA/GQA's savings go back into the FFN (Ainslie et al. 2023, arXiv:2305.13245),
  a MoE gets the dense model's active parameters.
- **training budget** (:class:`Budget`): train for a number of steps, tokens, FLOPs (steps =
  FLOPs / (training FLOPs per token x tokens per step)) or seconds of wall time (steps from the
  training speed measured on the same device in the same job).
"""

import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from zoo.errors import ConfigError

BUDGET_KINDS = ("steps", "tokens", "flops", "time")
MATCH_BY = ("params", "active_params", "flops")


@dataclass(frozen=True)
class Budget:
    """How long each variant trains.

    Args:
        kind: ``steps`` (``value`` or ``trainer.max_steps``), ``tokens``, ``flops`` or ``time`` (seconds).
        value: the amount of ``kind``; ``None`` only with ``steps``.
    """

    kind: str = "steps"
    value: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ConfigError("bench.budget.kind", self.kind, f"one of {', '.join(BUDGET_KINDS)}")
        if self.value is None and self.kind != "steps":
            raise ConfigError("bench.budget.value", None, f"a number of {self.kind} (only kind=steps may leave it null)")
        if self.value is not None and self.value <= 0:
            raise ConfigError("bench.budget.value", self.value, "> 0")

    def steps(self, *, default_steps: int, tokens_per_step: int, train_flops_per_token: float, train_tokens_per_s: float | None) -> int:
        """Optimizer steps this budget buys a variant (at least one)."""
        if self.kind == "steps":
            return int(self.value or default_steps)
        if self.kind == "tokens":
            tokens = self.value
        elif self.kind == "flops":
            tokens = self.value / train_flops_per_token
        else:
            if not train_tokens_per_s:
                raise ConfigError("bench.budget.kind", "time", "needs the training speed: keep bench.speed.enabled=true")
            tokens = self.value * train_tokens_per_s
        return max(1, math.floor(tokens / tokens_per_step))


def measure(model_cfg: DictConfig, *, by: str, seq_len: int) -> float:
    """The count ``by`` names of the model ``model_cfg`` builds, without allocating weights."""
    from zoo.config import instantiate_model

    model = instantiate_model(model_cfg, device="meta")
    counts = model.param_counts()
    if by == "params":
        return counts["params"] - counts["embedding_params"]
    if by == "active_params":
        return counts["active_params"] - counts["embedding_params"]
    return model.flops(seq_len=seq_len).per_token()["total"]


def with_knob(model_cfg: DictConfig, knob: str, value: int) -> DictConfig:
    copy = OmegaConf.create(OmegaConf.to_container(model_cfg, resolve=True))
    if OmegaConf.select(copy, knob, default="__missing__") == "__missing__":
        raise ConfigError("bench.match.knob", knob, "a key of the model config, e.g. ffn.hidden_dim")
    OmegaConf.update(copy, knob, value)
    return copy


def match_knob(model_cfg: DictConfig, *, target: float, by: str, knob: str = "ffn.hidden_dim", seq_len: int) -> int:
    """The value of ``model.<knob>`` at which ``measure(by)`` comes closest to ``target``.

    Every count is affine in a width such as the FFN's hidden size, so two probes solve it; the
    nearest integers around the solution are then checked exactly.
    """
    if by not in MATCH_BY:
        raise ConfigError("bench.match.by", by, f"one of {', '.join(MATCH_BY)} (or null: no matching)")
    with torch.device("meta"):
        lo, hi = 64, 128
        m_lo = measure(with_knob(model_cfg, knob, lo), by=by, seq_len=seq_len)
        m_hi = measure(with_knob(model_cfg, knob, hi), by=by, seq_len=seq_len)
        if m_hi == m_lo:
            raise ConfigError("bench.match.knob", knob, f"does not change the model's {by}")
        solution = lo + (target - m_lo) * (hi - lo) / (m_hi - m_lo)
        candidates = {max(1, math.floor(solution)), max(1, math.ceil(solution))}
        scored = {v: abs(measure(with_knob(model_cfg, knob, v), by=by, seq_len=seq_len) - target) for v in candidates}
    return min(scored, key=lambda v: (scored[v], v))
