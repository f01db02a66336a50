"""T5 span corruption for encoder-decoders (``objective=span_corruption``).

Raffel et al. 2019, arXiv:1910.10683, section 3.1.4; the span-length algorithm follows
``t5.data.preprocessors.random_spans_noise_mask``.
"""

import torch

from zoo.data.packing import Batch
from zoo.errors import ConfigError
from zoo.objectives.base import Metrics, Objective, add_aux_loss, masked_cross_entropy


def random_segmentation(n_items: int, n_segments: int, *, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """``(b, n_segments)`` lengths of a uniformly random split of ``n_items`` into non-empty segments.

    As T5: the ``n_segments - 1`` segment starts are a random subset of positions ``1 .. n_items - 1``.
    """
    first = torch.zeros(batch_size, n_items, dtype=torch.long)
    if n_segments > 1:
        starts = torch.rand(batch_size, n_items - 1, generator=generator).argsort(dim=1)[:, : n_segments - 1] + 1
        first.scatter_(1, starts, 1)
    segment = first.cumsum(dim=1)
    return torch.zeros(batch_size, n_segments, dtype=torch.long).scatter_add_(1, segment, torch.ones_like(segment))


def span_counts(length: int, *, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """``(noise tokens, noise spans)`` T5 corrupts in ``length`` tokens; the same for every row."""
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_spans = max(round(n_noise / mean_span_length), 1)
    return n_noise, min(n_spans, n_noise, length - n_noise)


def random_spans_noise_mask(length: int, *, noise_density: float, mean_span_length: float, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """``(b, length)`` bool, ``True`` at noise: spans alternate kept / noise, starting kept, ending noise.

    Args:
        length: tokens per row.
        noise_density: share of tokens corrupted (T5: 0.15).
        mean_span_length: mean noise span length (T5: 3).
        batch_size: rows, each with its own segmentation.
        generator: CPU generator.
    """
    n_noise, n_spans = span_counts(length, noise_density=noise_density, mean_span_length=mean_span_length)
    noise = random_segmentation(n_noise, n_spans, batch_size=batch_size, generator=generator)
    kept = random_segmentation(length - n_noise, n_spans, batch_size=batch_size, generator=generator)
    starts = torch.stack([kept, noise], dim=2).flatten(1).cumsum(dim=1)[:, :-1]
    span_index = torch.zeros(batch_size, length, dtype=torch.long).scatter_(1, starts, 1).cumsum(dim=1)
    return span_index % 2 == 1


def replace_spans(tokens: torch.Tensor, spans: torch.Tensor, sentinels: torch.Tensor) -> torch.Tensor:
    """Each run of ``True`` in ``spans`` becomes one sentinel (the ``k``-th run ``sentinels[k]``); the rest is kept.

    Args:
        tokens: ``(b, L)``.
        spans: ``(b, L)`` bool, with the same number of ``True`` tokens and runs in every row.
        sentinels: ``(s,)`` ids, ``s`` >= runs per row.

    Returns: ``(b, L - span tokens + runs)``.
    """
    previous = torch.nn.functional.pad(spans[:, :-1], (1, 0), value=False)
    first = spans & ~previous
    run = (first.cumsum(dim=1) - 1).clamp(min=0)
    out = torch.where(first, sentinels.to(tokens.device)[run], tokens)
    return out[~(spans & previous)].view(tokens.shape[0], -1)


class SpanCorruptionObjective(Objective):
    """T5 span corruption: spans of the row (15 %, mean length 3) are each replaced by a sentinel in the
    encoder input, and the decoder writes ``<extra_id_0> span_0 <extra_id_1> span_1 ... <eos>``.

    The whole packed row ``tokens (b, n + 1)`` is the text; the batch's ``loss_mask`` and ``segment_ids``
    do not apply (attention crosses the row's documents whatever ``data.boundaries`` says).
    ``src = kept tokens with sentinels + <eos>``; ``tgt = sentinels with spans + <eos>``; the decoder
    input is ``tgt`` shifted right after ``<bos>`` (T5 starts with ``<pad>``: its vocabulary has no
    ``<bos>``). Every row has the same span count, so no padding.

    Args:
        noise_density: share of tokens corrupted.
        mean_span_length: mean corrupted span length.
        tokenizer: the run's tokenizer (sentinel, ``<eos>``, ``<bos>`` ids); required.
        seed: as :class:`~zoo.objectives.base.Objective`.
    """

    name = "span_corruption"
    compatible_archs = ("encdec",)

    def __init__(self, *, noise_density: float = 0.15, mean_span_length: float = 3.0, tokenizer=None, seed: int = 0) -> None:
        super().__init__(tokenizer=tokenizer, seed=seed)
        if not 0 < noise_density < 1:
            raise ConfigError("objective.noise_density", noise_density, "in (0, 1)")
        if mean_span_length < 1:
            raise ConfigError("objective.mean_span_length", mean_span_length, ">= 1")
        self.noise_density, self.mean_span_length = noise_density, mean_span_length

    def make_inputs(self, batch: Batch, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``src (b, m)``, ``tgt_in (b, k)`` (decoder input), ``targets (b, k)``, ``loss_mask (b, k)``, ``noise (b, n + 1)``."""
        tok = self._needs_tokenizer()
        tokens = batch["tokens"]
        b, length = tokens.shape
        n_noise, n_spans = span_counts(length, noise_density=self.noise_density, mean_span_length=self.mean_span_length)
        if n_spans > len(tok.sentinel_ids):
            raise ConfigError("tokenizer.n_sentinels", len(tok.sentinel_ids), f">= {n_spans}, the spans span corruption cuts from rows of {length} tokens")
        g = self.next_generator() if generator is None else generator
        noise = random_spans_noise_mask(length, noise_density=self.noise_density, mean_span_length=self.mean_span_length, batch_size=b, generator=g)
        return self.corrupted(tokens, noise.to(tokens.device))

    def continuation_inputs(self, batch: Batch, *, prefix_len: int) -> dict[str, torch.Tensor]:
        """The row's end from ``prefix_len`` on as its one noise span, the loss on that span's tokens only
        (not on its sentinel nor ``<eos>``): :meth:`Objective.continuation`."""
        tokens = batch["tokens"]
        noise = (torch.arange(tokens.shape[1], device=tokens.device) >= prefix_len).expand_as(tokens)
        x = self.corrupted(tokens, noise)
        x["loss_mask"][:, [0, -1]] = False
        return x

    def corrupted(self, tokens: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """The inputs of :meth:`make_inputs` for rows ``tokens (b, L)`` with spans ``noise (b, L)`` (kept first, noise last)."""
        tok = self._needs_tokenizer()
        b = tokens.shape[0]
        sentinels = torch.tensor(tok.sentinel_ids, dtype=torch.long)
        eos = tokens.new_full((b, 1), tok.eos_id)
        src = torch.cat([replace_spans(tokens, noise, sentinels), eos], dim=1)
        # the row starts with a kept span, so kept span k precedes noise span k: same sentinel
        targets = torch.cat([replace_spans(tokens, ~noise, sentinels), eos], dim=1)
        tgt_in = torch.cat([tokens.new_full((b, 1), tok.bos_id), targets[:, :-1]], dim=1)
        return {"src": src, "tgt_in": tgt_in, "targets": targets, "loss_mask": torch.ones_like(targets, dtype=torch.bool), "noise": noise}

    def loss(self, model, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        """The loss of ``model`` on inputs of :meth:`make_inputs`."""
        loss, metrics = masked_cross_entropy(model(x["src"], x["tgt_in"]), x["targets"], x["loss_mask"])
        return add_aux_loss(model, loss, metrics), metrics

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        self.check(model)
        return self.loss(model, self.make_inputs(batch))

    def __repr__(self) -> str:
        return f"SpanCorruptionObjective(noise_density={self.noise_density}, mean_span_length={self.mean_span_length}, seed={self.seed})"
