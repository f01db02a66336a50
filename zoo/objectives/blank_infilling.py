"""GLM's autoregressive blank infilling for the prefix decoder (``objective=blank_infilling``).

Du et al. 2022, arXiv:2103.10360, sections 2.1-2.3. Spans of each row are blanked out of the text; the
corrupted text (Part A) is the prefix decoder's bidirectional prefix, and the spans follow it (Part B),
in random order, each written left to right after a start sentinel. Part B reads all of Part A and the
spans written before it, which is the prefix decoder's own mask with Part A as the prefix. Shares of the
rows may instead take GLM's two other objectives (section 2.3): the document level, one long span, the
row's end, behind its own blank ``[gMASK]``, which teaches the model to write long text; and the sentence
level, whole sentences behind ``[sMASK]``, which teaches it to write a sentence or a paragraph.
"""

import functools
from typing import NamedTuple

import torch
from torch.nn import functional as F

from zoo.data.packing import Batch
from zoo.errors import ConfigError
from zoo.objectives.base import Metrics, Objective, add_aux_loss, masked_cross_entropy


def span_lengths(n_masked: int, *, mean_span_length: float, generator: torch.Generator) -> torch.Tensor:
    """Span lengths ``(s,)`` summing to ``n_masked``: Poisson(``mean_span_length``) draws, zeros redrawn,
    until ``n_masked`` tokens are covered (the last span cut to fit), then shuffled, so the cut one
    falls anywhere."""
    drawn: list[int] = []
    total = 0
    while total < n_masked:
        draws = torch.poisson(torch.full((max(n_masked // 2, 4),), float(mean_span_length)), generator=generator).long()
        for length in draws[draws > 0].tolist():
            drawn.append(min(length, n_masked - total))
            total += drawn[-1]
            if total == n_masked:
                break
    lengths = torch.tensor(drawn, dtype=torch.long)
    return lengths[torch.randperm(len(lengths), generator=generator)]


def place_spans(length: int, lengths: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Start index ``(s,)`` of each span of ``lengths (s,)`` in a row of ``length`` tokens, in order,
    with at least one kept token between two spans (so each ``[MASK]`` stands for one whole span).

    The kept tokens not needed as separators are spread over the ``s + 1`` gaps (before, between and
    after the spans) by ``s`` sorted uniform cut points.
    """
    n_spans = len(lengths)
    free = length - int(lengths.sum()) - (n_spans - 1)
    if free < 0:
        raise ValueError(f"{n_spans} spans of {int(lengths.sum())} tokens with a token between each do not fit in {length} tokens")
    cuts = torch.randint(0, free + 1, (n_spans,), generator=generator).sort().values
    # span i starts after the free tokens before it, the spans before it and one separator per span before it
    before = torch.cumsum(lengths, 0) - lengths
    return cuts + before + torch.arange(n_spans)


def document_span(length: int, *, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """GLM's document-level span (arXiv:2103.10360, section 2.3) in a row of ``length >= 2`` tokens:
    ``(starts (1,), lengths (1,))`` of one span that ends the row, its length uniform in
    ``[ceil(length / 2), length - 1]`` (the paper's 50-100%, keeping one token of text to read), so the
    model learns to write the rest of a text from its start, as GLM's code does (its ``gpt`` mode)."""
    span = int(torch.randint((length + 1) // 2, length, (), generator=generator))
    return torch.tensor([length - span]), torch.tensor([span])


#: characters that end a sentence when whitespace follows them
SENTENCE_STOPS = ".!?"


class SentenceTable(NamedTuple):
    """Per token id of a tokenizer, what :func:`sentence_bounds` needs: ``(vocab_size,)`` booleans."""

    newline: torch.Tensor  #: its text holds a line break: a sentence (or a line of code) ends with it
    stop: torch.Tensor  #: its text ends in ``.``, ``!`` or ``?``: a sentence ends with it if whitespace follows
    space_first: torch.Tensor  #: its text starts with whitespace

    @classmethod
    def of(cls, tokenizer) -> "SentenceTable":
        """The table of ``tokenizer``'s regular tokens (specials end nothing)."""
        texts = [tokenizer.decode([i]) for i in range(tokenizer.n_regular)] + [""] * (tokenizer.vocab_size - tokenizer.n_regular)
        flags = lambda test: torch.tensor([bool(t) and test(t) for t in texts])  # noqa: E731
        return cls(flags(lambda t: "\n" in t), flags(lambda t: t[-1] in SENTENCE_STOPS), flags(lambda t: t[0].isspace()))


def sentence_bounds(row: torch.Tensor, table: SentenceTable) -> tuple[torch.Tensor, torch.Tensor]:
    """``(starts, lengths)`` of the sentences of ``row (L,)``, in order, covering it: a sentence ends after a
    token with a line break, after ``.``, ``!`` or ``?`` that whitespace follows (unless a line break comes
    with it: the sentence then ends there), and at the row's end (so the row's first and last sentences may
    be cut by the row's edges)."""
    following = row[1:]
    followed_by_space = torch.cat([table.space_first[following] & ~table.newline[following], torch.tensor([True])])
    ends = table.newline[row] | (table.stop[row] & followed_by_space)
    ends[-1] = True
    last = ends.nonzero().squeeze(1)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), last[:-1] + 1])
    return starts, last - starts + 1


def sentence_spans(
    row: torch.Tensor, table: SentenceTable, *, n_masked: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """GLM's sentence-level spans (arXiv:2103.10360, section 2.3) of ``row (L,)``: whole sentences, drawn in a
    random order until they cover ``n_masked`` tokens, skipping any that would leave no token to read;
    neighbours merge into one span, so spans stay apart. ``(starts, lengths)`` in order, or ``None`` where
    no sentence fits (a row that is one sentence)."""
    starts, lengths = sentence_bounds(row, table)
    chosen = torch.zeros(len(starts), dtype=torch.bool)
    covered = 0
    for i in torch.randperm(len(starts), generator=generator).tolist():
        if covered + int(lengths[i]) <= len(row) - 1:
            chosen[i] = True
            covered += int(lengths[i])
            if covered >= n_masked:
                break
    if not chosen.any():
        return None
    first = chosen & ~torch.cat([torch.tensor([False]), chosen[:-1]])  # a chosen sentence after an unchosen one
    group = torch.cumsum(first.long(), 0)[chosen] - 1  # each chosen sentence's span
    span_lengths_ = torch.zeros(int(first.sum()), dtype=torch.long).index_add_(0, group, lengths[chosen])
    return starts[first], span_lengths_


#: GLM's sentinels, the tokenizer's first T5 sentinels (``<extra_id_0>`` ...) in this order
GLM_SENTINELS = ("[S]", "[E]", "[gMASK]", "[sMASK]")


def glm_sentinel(tokenizer, name: str, *, needed_by: str) -> int:
    """The id of GLM's sentinel ``name`` (one of :data:`GLM_SENTINELS`) in ``tokenizer``, which the setting
    ``needed_by`` asks for; a tokenizer with too few sentinels is refused in one line."""
    i = GLM_SENTINELS.index(name)
    if len(tokenizer.sentinel_ids) <= i:
        names = ", ".join(f"{n} <extra_id_{k}>" for k, n in enumerate(GLM_SENTINELS[: i + 1]))
        raise ConfigError("tokenizer.n_sentinels", len(tokenizer.sentinel_ids), f">= {i + 1} with {needed_by}: {names}")
    return tokenizer.sentinel_ids[i]


def generation_blank(tokenizer) -> int:
    """GLM's ``[gMASK]``, the blank of the document-level objective."""
    return glm_sentinel(tokenizer, "[gMASK]", needed_by="objective.document_ratio > 0")


def sentence_blank(tokenizer) -> int:
    """GLM's ``[sMASK]``, the blank of the sentence-level objective."""
    return glm_sentinel(tokenizer, "[sMASK]", needed_by="objective.sentence_ratio > 0")


def infilling_sentinels(tokenizer) -> tuple[int, int, int, int]:
    """``(<mask>, [S], [E], <pad>)`` ids of ``tokenizer``: the blank, the start and end of a span, and
    padding, as training lays them out and generation (``generate(..., blank_id=)``) must too."""
    start, end = (glm_sentinel(tokenizer, name, needed_by="objective=blank_infilling") for name in ("[S]", "[E]"))
    return tokenizer.mask_id, start, end, tokenizer.pad_id


class InfillingRow(NamedTuple):
    """One row as the model reads it, unpadded: ``N = prefix_len + spans + span tokens``."""

    tokens: torch.Tensor  #: (N,) Part A, then Part B
    positions: torch.Tensor  #: (N, 2) (position id, intra-span id)
    targets: torch.Tensor  #: (N,) ``<pad>`` in Part A
    loss_mask: torch.Tensor  #: (N,) ``True`` in Part B
    prefix_len: int  #: Part A's length


def infilling_row(
    row: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, order: torch.Tensor, *, mask_id: int, start_id: int, end_id: int, pad_id: int
) -> InfillingRow:
    """Parts A and B of ``row (L,)`` with spans at ``starts (s,)`` of ``lengths (s,)``, Part B in ``order (s,)``.

    Part A: the row with each span replaced by ``mask_id``, at ``(index, 0)``. Part B: for span ``k`` in
    ``order``, ``start_id x_1 .. x_l`` with targets ``x_1 .. x_l end_id``, at ``(index of span k's mask, 1 .. l + 1)``.
    """
    blank = torch.zeros(len(row), dtype=torch.bool)
    # every blanked index: each span's start, repeated over its length, plus the place inside it
    blank[torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths) + torch.arange(int(lengths.sum()))] = True
    first = torch.zeros_like(blank)
    first[starts] = True
    keep = ~blank | first
    part_a = torch.where(first, mask_id, row)[keep]
    mask_at = (keep.cumsum(0) - 1)[starts]  # each span's <mask> index in Part A
    a_len = len(part_a)

    read = lengths[order] + 1  # Part B tokens per span: [S] and the span
    span = torch.repeat_interleave(order, read)  # the span each Part B token belongs to
    intra = torch.arange(int(read.sum())) - torch.repeat_interleave(torch.cumsum(read, 0) - read, read)  # 0 .. l: [S], x_1 ..
    source = starts[span] + intra - 1  # the text index of the token read (for intra >= 1)
    b_tokens = torch.where(intra == 0, start_id, row[source.clamp(min=0)])
    b_targets = torch.where(intra == lengths[span], end_id, row[(source + 1).clamp(max=len(row) - 1)])

    a_positions = torch.stack([torch.arange(a_len), torch.zeros(a_len, dtype=torch.long)], -1)
    b_positions = torch.stack([mask_at[span], intra + 1], -1)
    return InfillingRow(
        tokens=torch.cat([part_a, b_tokens]),
        positions=torch.cat([a_positions, b_positions]),
        targets=torch.cat([torch.full((a_len,), pad_id, dtype=row.dtype), b_targets]),
        loss_mask=torch.arange(a_len + len(b_tokens)) >= a_len,
        prefix_len=a_len,
    )


def batched(rows: list[InfillingRow], *, pad_id: int, device) -> dict[str, torch.Tensor]:
    """``tokens``, ``positions``, ``targets``, ``loss_mask`` and ``prefix_len`` of ``rows``, right-padded to the longest."""
    width = max(len(r.tokens) for r in rows)

    def padded(field: str, value) -> torch.Tensor:
        tensors = [getattr(r, field) for r in rows]
        return torch.stack([F.pad(t, (0, 0) * (t.dim() - 1) + (0, width - len(t)), value=value) for t in tensors]).to(device)

    return {
        "tokens": padded("tokens", pad_id),
        "positions": padded("positions", 0),
        "targets": padded("targets", pad_id),
        "loss_mask": padded("loss_mask", False),
        "prefix_len": torch.tensor([r.prefix_len for r in rows], device=device),
    }


class BlankInfillingObjective(Objective):
    """GLM's autoregressive blank infilling (arXiv:2103.10360): fill each blanked span, left to right.

    In each row of ``tokens[:, :-1]`` (``L`` tokens; the batch's last column, ``loss_mask`` and
    ``segment_ids`` do not apply, the whole row is the text), spans of Poisson(``mean_span_length``)
    lengths are drawn until ``round(mask_ratio * L)`` tokens are covered (at least one), and placed
    apart. The model's input is then, per row:

    - Part A: the text with each span replaced by one ``<mask>``; the bidirectional prefix
      (``prefix_len`` = its length); 2D positions ``(index in Part A, 0)``; no loss.
    - Part B: the spans in a random order, each as ``[S] x_1 .. x_l`` with targets ``x_1 .. x_l [E]``;
      2D positions ``(index of the span's <mask> in Part A, 1 .. l + 1)``; loss on every token.
    - right padding (``<pad>``, position ``(0, 0)``, no loss) to the batch's longest row: it comes after
      every real token, so the causal part of the mask keeps it unread.

    A row grows from ``L`` to ``L + 2 * spans`` tokens (about ``1.1 L`` at the paper's 15 % and mean
    length 3), and the row lengths differ, so a batch's length varies from step to step.
    ``[S]`` and ``[E]`` are the tokenizer's first two sentinels (``<extra_id_0>``, ``<extra_id_1>``;
    T5's span corruption takes its sentinels from the same place), never in the text.
    The model must take 2D positions (``model/pos=learned_2d`` or ``rope_2d``).

    With ``document_ratio``, that share of the rows takes GLM's document-level objective instead
    (arXiv:2103.10360, section 2.3): one span ending the row, half to all but one of its tokens
    (:func:`document_span`), blanked by ``[gMASK]`` (the third sentinel), so Part A is the text's start
    and Part B writes the rest. GLM's short and long blanks differ by their token, so a prompt says which
    it wants; a model trained with them continues a text behind ``[gMASK]``
    (:meth:`continuation_prompt`).

    With ``sentence_ratio``, that share of the rows takes GLM's sentence-level objective (section 2.3): whole
    sentences (:func:`sentence_bounds`: ended by a line break, or by ``.``, ``!`` or ``?`` before whitespace,
    so a line of code counts as one) drawn until they cover ``mask_ratio`` of the row, each run of them
    behind one ``[sMASK]`` (the fourth sentinel); a row that is a single sentence takes short spans instead.
    GLM draws the kind per batch; zoo per row, for a steadier mix.

    Args:
        mask_ratio: share of each row's tokens blanked out, in ``(0, 0.5]`` (GLM's base setting: 0.15);
            at most half, so that spans with a token between them always fit.
        mean_span_length: the Poisson rate of the span lengths (GLM: 3), ``> 0``.
        document_ratio: share of the rows that take the document-level objective, in ``[0, 1]``; 0: none.
        sentence_ratio: share of the rows that take the sentence-level objective, in ``[0, 1]`` with
            ``document_ratio + sentence_ratio <= 1``; 0: none.
        tokenizer: the run's tokenizer (``<mask>``, ``<pad>`` and sentinel ids); required.
        seed: as :class:`~zoo.objectives.base.Objective`.
    """

    name = "blank_infilling"
    compatible_archs = ("prefix",)

    def __init__(
        self, *, mask_ratio: float = 0.15, mean_span_length: float = 3.0, document_ratio: float = 0.0, sentence_ratio: float = 0.0,
        tokenizer=None, seed: int = 0,
    ) -> None:
        super().__init__(tokenizer=tokenizer, seed=seed)
        if not 0 < mask_ratio <= 0.5:
            raise ConfigError("objective.mask_ratio", mask_ratio, "in (0, 0.5] (GLM: 0.15): spans need kept tokens between them")
        if not mean_span_length > 0:
            raise ConfigError("objective.mean_span_length", mean_span_length, "> 0, the Poisson rate of the span lengths (GLM: 3)")
        if not 0 <= document_ratio <= 1:
            raise ConfigError("objective.document_ratio", document_ratio, "in [0, 1]: the share of rows with one long blank at their end ([gMASK])")
        if not 0 <= sentence_ratio <= 1 - document_ratio:
            raise ConfigError(
                "objective.sentence_ratio", sentence_ratio, f"in [0, 1 - objective.document_ratio] = [0, {1 - document_ratio:g}]: the share of rows with whole sentences blanked ([sMASK])"
            )  # fmt: skip
        self.mask_ratio, self.mean_span_length = float(mask_ratio), float(mean_span_length)
        self.document_ratio, self.sentence_ratio = float(document_ratio), float(sentence_ratio)
        if tokenizer is not None:
            self.sentinels()  # a tokenizer short of sentinels fails when the run is built, not at its first step
            self.continuation_blank()
            if self.sentence_ratio:
                sentence_blank(tokenizer)

    @classmethod
    def check(cls, model) -> None:
        """Refuse a model other than a prefix decoder, or one whose position scheme takes no 2D positions."""
        super().check(model)
        model.check_2d_positions()

    def sentinels(self) -> tuple[int, int, int, int]:
        """``(<mask>, [S], [E], <pad>)`` ids (:func:`infilling_sentinels`)."""
        return infilling_sentinels(self._needs_tokenizer())

    @functools.cached_property
    def sentence_table(self) -> SentenceTable:
        """Where the tokenizer's tokens end sentences (:class:`SentenceTable`), read once."""
        return SentenceTable.of(self._needs_tokenizer())

    def continuation_blank(self) -> int:
        """The blank behind which the model continues a text: ``[gMASK]`` where it trained on documents
        (``document_ratio > 0``), else ``<mask>``, the only blank it knows."""
        return generation_blank(self._needs_tokenizer()) if self.document_ratio else self.sentinels()[0]

    # index work on the CPU with a loop over rows: a compiled objective (trainer.compile) would only
    # break its graph here, so the forward and the loss compile and this runs eagerly
    @torch.compiler.disable
    def make_inputs(self, batch: Batch, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """``tokens (b, N)``, ``positions (b, N, 2)``, ``prefix_len (b,)``, ``targets (b, N)``, ``loss_mask (b, N)``,
        and ``starts``, ``lengths``: each row's span starts and lengths in the text, ``(s_i,)`` tensors in a list."""
        mask_id, start_id, end_id, pad_id = self.sentinels()
        text = batch["tokens"][:, :-1].cpu().long()
        length = text.shape[1]
        n_masked = max(1, round(self.mask_ratio * length))
        g = self.next_generator() if generator is None else generator
        gmask = self.continuation_blank()
        smask = sentence_blank(self.tokenizer) if self.sentence_ratio else None
        rows, all_starts, all_lengths = [], [], []
        for row in text:
            # the kind is drawn only with documents or sentences in the mix, so a run without them keeps its spans
            mixed = (self.document_ratio or self.sentence_ratio) and length >= 2
            kind = float(torch.rand((), generator=g)) if mixed else 1.0
            if kind < self.document_ratio:
                (starts, lengths), blank = document_span(length, generator=g), gmask
            elif kind < self.document_ratio + self.sentence_ratio and (
                sentences := sentence_spans(row, self.sentence_table, n_masked=n_masked, generator=g)
            ) is not None:
                (starts, lengths), blank = sentences, smask
            else:
                lengths = span_lengths(n_masked, mean_span_length=self.mean_span_length, generator=g)
                starts, blank = place_spans(length, lengths, generator=g), mask_id
            order = torch.randperm(len(lengths), generator=g)
            rows.append(infilling_row(row, starts, lengths, order, mask_id=blank, start_id=start_id, end_id=end_id, pad_id=pad_id))
            all_starts.append(starts)
            all_lengths.append(lengths)
        return {**batched(rows, pad_id=pad_id, device=batch["tokens"].device), "starts": all_starts, "lengths": all_lengths}

    @torch.compiler.disable
    def continuation_inputs(self, batch: Batch, *, prefix_len: int) -> dict[str, torch.Tensor]:
        """The whole row with its end from ``prefix_len`` on as its one blank, the loss on that span's tokens
        only (not on the ``[E]`` after them): :meth:`Objective.continuation`. GLM's own way to continue a
        text: one blank at its end (:meth:`continuation_blank`), as its document-level objective trains."""
        _, start_id, end_id, pad_id = self.sentinels()
        blank = self.continuation_blank()
        text = batch["tokens"].cpu().long()
        length = text.shape[1]
        starts, lengths, order = torch.tensor([prefix_len]), torch.tensor([length - prefix_len]), torch.tensor([0])
        rows = [infilling_row(row, starts, lengths, order, mask_id=blank, start_id=start_id, end_id=end_id, pad_id=pad_id) for row in text]
        x = batched(rows, pad_id=pad_id, device=batch["tokens"].device)
        x["loss_mask"][:, -1] = False  # every row has the same length: its last target is the span's [E]
        return x

    def continuation_prompt(self, ids: list[int]) -> tuple[list[int], dict[str, int]]:
        """The prompt with one blank at its end, filled after ``[S]`` until ``[E]``: a GLM model continues a
        text by infilling, as it trained (``generate(..., blank_id=)``), behind :meth:`continuation_blank`."""
        _, start_id, end_id, pad_id = self.sentinels()
        blank = self.continuation_blank()
        return [*ids, blank], {"blank_id": blank, "start_id": start_id, "eos_id": end_id, "pad_id": pad_id}

    def loss(self, model, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        """The loss of ``model`` on inputs of :meth:`make_inputs`."""
        logits = model(x["tokens"], positions=x["positions"], prefix_len=x["prefix_len"])
        loss, metrics = masked_cross_entropy(logits, x["targets"], x["loss_mask"])
        return add_aux_loss(model, loss, metrics), metrics

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        self.check(model)
        return self.loss(model, self.make_inputs(batch))

    def __repr__(self) -> str:
        return (
            f"BlankInfillingObjective(mask_ratio={self.mask_ratio}, mean_span_length={self.mean_span_length}, "
            f"document_ratio={self.document_ratio}, sentence_ratio={self.sentence_ratio}, seed={self.seed})"
        )
