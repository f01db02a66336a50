"""What every architecture answers about itself, so nothing outside ``zoo/arch`` branches on its type.

Training, benchmarks, generation and the contract suite (:mod:`zoo.testing`) ask the model: how to
make example inputs, how long its input is for a training length, how to open a decoding session,
and what it costs. A plugin architecture that answers these passes the contract and runs everywhere.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from zoo.arch.cost import FlopCount
from zoo.arch.session import Session


@dataclass
class Example:
    """Random inputs for one forward: ``model(**inputs)`` gives logits ``(b, n, vocab_size)``.

    Args:
        inputs: the keyword arguments of the model's forward.
        scored: the key of ``inputs`` whose ``n`` tokens the logits belong to.
        causal_from: the first position of ``scored`` from which no output sees a later token of it
            (0 for a causal decoder, the longest prefix for a prefix decoder); ``None``: bidirectional.
        tokens: tokens one forward reads (source plus target for an encoder-decoder).
    """

    inputs: dict[str, torch.Tensor]
    scored: str
    causal_from: int | None
    tokens: int


@runtime_checkable
class Architecture(Protocol):
    """The calling convention and the costs of a ``model`` option (class attributes and methods)."""

    #: the option's name, as in ``model=<arch>`` (objectives declare the ones they train)
    arch: str
    vocab_size: int
    #: whether :meth:`open_session` works (an encoder-only model cannot generate)
    can_generate: bool
    #: whether generation continues the prompt (a decoder) or writes a new sequence from it (encoder-decoder)
    continues_prompt: bool
    #: whether a stack reads bidirectionally (a position scheme that needs a causal mask cannot serve it)
    has_bidirectional_stack: bool
    #: whether blocks hold cross-attention (the residual wiring must have a slot for it)
    cross_attends: bool
    #: how a task head summarises :meth:`features` by default: ``last`` (a causal reader) or ``mean``
    feature_pool: str

    def example(self, *, batch: int, length: int, generator: torch.Generator | None = None) -> Example:
        """Random inputs of ``batch`` sequences of ``length`` tokens, on the model's device."""
        ...

    def features(self, tokens: torch.Tensor, *, valid: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states ``(b, n, dim)`` of whole texts ``tokens (b, n)`` (``valid`` ``False`` at padding):
        what a task head reads (:mod:`zoo.finetune.classify`)."""
        ...

    def input_length(self, seq_len: int) -> int:
        """The longest sequence a position scheme must encode when training on rows of ``seq_len`` tokens."""
        ...

    def open_session(
        self, prompts: list[list[int]], *, pad_id: int, start_id: int, room: int, rollback: int = 0, blank_id: int | None = None,
        end_id: int | None = None,
    ) -> Session:
        """A decoding session over ``prompts`` with a cache for ``room`` more tokens (:mod:`zoo.arch.session`);
        with ``blank_id``, one that fills each prompt's blanks (GLM's blank infilling; ``end_id`` ends each
        span), or a ConfigError."""
        ...

    def uncached_next_logits(self, prompt: Sequence[int], generated: Sequence[int], *, start_id: int = 0) -> torch.Tensor:
        """Logits ``(vocab_size,)`` of the token after ``generated``, from a full forward without a cache."""
        ...

    def flops(self, *, seq_len: int) -> FlopCount:
        """Forward FLOPs of one sequence of ``seq_len`` tokens, per component (:mod:`zoo.arch.cost`)."""
        ...

    def param_counts(self) -> dict[str, int]:
        """``params``, ``active_params`` and ``embedding_params`` (:func:`zoo.arch.cost.param_counts`)."""
        ...

    def layer_costs(self, *, seq_len: int) -> list[dict]:
        """One row per block: kind, window, parameters, FLOPs per token, FLOPs of a decoding step, KV-cache bytes
        (:func:`zoo.arch.cost.layer_costs`)."""
        ...


def missing_answers(model: object) -> list[str]:
    """The members of :class:`Architecture` that ``model`` lacks (empty when it answers them all)."""
    methods = [name for name, value in vars(Architecture).items() if callable(value) and not name.startswith("_")]
    return [name for name in [*Architecture.__annotations__, *methods] if not hasattr(model, name)]


def device_of(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))
