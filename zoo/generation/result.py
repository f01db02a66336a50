"""What generation returns: each prompt's new tokens, and the draft's acceptance when speculating."""

from dataclasses import dataclass

import torch


@dataclass
class Generation:
    """What :func:`generate` returns.

    Args:
        tokens: the new tokens of each prompt, up to and including its EOS when one was produced.
        drafted: draft tokens proposed (speculative decoding only).
        accepted: draft tokens the target model agreed with.
        target_calls: forward passes of the (target) model after the prefill.
    """

    tokens: list[list[int]]
    drafted: int = 0
    accepted: int = 0
    target_calls: int = 0

    @property
    def acceptance_rate(self) -> float | None:
        """Share of draft tokens accepted (Leviathan et al.'s alpha), ``None`` without a draft."""
        return self.accepted / self.drafted if self.drafted else None

    @property
    def n_new(self) -> int:
        return sum(len(t) for t in self.tokens)


def trim_at_eos(rows: torch.Tensor, eos_id: int | None, *, ends: list[int] | None = None) -> list[list[int]]:
    """Rows of ``(b, n)`` ids as lists, each cut after its first ``eos_id``, or after its ``ends[i]``-th
    (a row filling several blanks ends each span with one)."""
    out = []
    for i, row in enumerate(rows.tolist()):
        at = [j for j, token in enumerate(row) if token == eos_id] if eos_id is not None else []
        need = ends[i] if ends is not None else 1
        if len(at) >= need:
            row = row[: at[need - 1] + 1]
        out.append(row)
    return out
