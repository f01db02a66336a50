"""Incremental decoding state of one model over one batch of prompts: its cache, positions and padding.

A session hides how an architecture is fed: a decoder-only model reads its prompt and then its own
tokens; an encoder-decoder encodes its source once and feeds the decoder. Each architecture opens
its own (``model.open_session(...)``); generation loops (:mod:`zoo.generation.loop`,
:mod:`zoo.generation.speculative`) only call :meth:`Session.feed` and :meth:`Session.truncate`.

Letters: ``b`` batch, ``n`` tokens fed in one call, ``t`` every position a session may reach, ``v`` vocabulary.
"""

import torch
from torch import nn

from zoo.attention.cache import prepare_cache, truncate_cache
from zoo.errors import ConfigError


def pad_batch(prompts: list[list[int]], *, pad_id: int, left: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens (b, n), pads (b,))``: prompts padded to one length on the left or on the right."""
    width = max(len(p) for p in prompts)
    pads = [width - len(p) for p in prompts]
    rows = [[pad_id] * k + p if left else p + [pad_id] * k for p, k in zip(prompts, pads)]
    return torch.tensor(rows, device=device), torch.tensor(pads, device=device)


def position_limit(model: nn.Module) -> int | None:
    """The longest sequence the model's position schemes can encode (learned positions), or ``None``."""
    limits = [m.max_positions for m in model.modules() if getattr(m, "max_positions", None) is not None]
    return min(limits) if limits else None


class Session:
    """Base of the sessions: a cache sized for ``room`` more tokens after the prompt.

    Args:
        model: a model that can generate (its ``new_cache()`` raises a ConfigError otherwise).
        room: tokens that may be fed after the prompt (new tokens plus speculative look-ahead).
        rollback: tokens :meth:`truncate` must be able to take back (speculative decoding).
    """

    #: ``(b, n)`` the tokens to feed first
    prompt: torch.Tensor
    #: whether its one-token decode steps may run on a static-shape cache (:mod:`zoo.generation.static`)
    static_steps: bool = True
    #: how many end tokens (``eos_id``) end a row: one, or ``(b,)`` a prompt's blanks when filling them
    ends_needed: int | torch.Tensor = 1

    def __init__(self, model: nn.Module, *, room: int, rollback: int = 0) -> None:
        self.model = model
        self.cache = model.new_cache()
        self.room, self.rollback = room, rollback
        self.fed = 0  # tokens fed so far (cache length)
        self.device = next(model.parameters()).device

    def open(self, width: int) -> None:
        """Size the cache once the prompt width is known; check the positions can go that far."""
        total = width + self.room
        limit = position_limit(self.model)
        if limit is not None and total > limit:
            raise ConfigError(
                "generate.max_new_tokens",
                self.room,
                f"prompt ({width} tokens) + new tokens must fit the model's {limit} learned positions (model.max_seq_len)",
            )
        prepare_cache(self.cache, max_len=total, rollback=self.rollback)

    #: ``(b | 1, t)`` the position of every column a call may reach
    positions: torch.Tensor

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens (b, n)`` after everything fed so far: logits ``(b, n, v)``."""
        start, n = self.fed, tokens.shape[1]
        logits = self.call(tokens, positions=self.positions[:, start : start + n], valid=self.valid_at(start, n))
        self.fed = start + n
        return logits

    def call(self, tokens: torch.Tensor, *, positions: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """One model call on ``tokens (b, n)`` at ``positions`` with this session's cache and fixed inputs
        (a prefix, an encoder output): logits ``(b, n, v)``. Counts nothing: :meth:`feed` does, and a
        compiled decode step (:mod:`zoo.generation.static`) calls this alone."""
        raise NotImplementedError

    def valid_at(self, start: int, n: int) -> torch.Tensor | None:
        """``(b, n)`` padding flags of the columns ``start .. start + n`` (``None``: no padding there)."""
        return None

    def truncate(self, n: int) -> None:
        """Forget everything fed after the first ``n`` tokens."""
        truncate_cache(self.cache, n)
        self.fed = n


class LMSession(Session):
    """A decoder-only model (causal or prefix): prompts left-padded, each sequence with its own positions.

    The prompt is the prefix of a prefix LM (``prefix_len`` = each prompt's length). Left padding puts
    every prompt's last token in the last column; a padded token is masked out as a key, and position
    ``j - pads`` makes each sequence count from 0 as if it were alone.

    Args:
        model: a causal or prefix LM.
        prompts: token ids per sequence (any lengths).
        pad_id: the id written into padding (never attended to).
        room, rollback: as in :class:`Session`.

    Shapes: :meth:`feed` takes ``(b, n)`` tokens and returns ``(b, n, v)`` logits.
    """

    def __init__(self, model: nn.Module, prompts: list[list[int]], *, pad_id: int, room: int, rollback: int = 0) -> None:
        super().__init__(model, room=room, rollback=rollback)
        self.prompt, pads = pad_batch(prompts, pad_id=pad_id, left=True, device=self.device)
        width = self.prompt.shape[1]
        self.open(width)
        column = torch.arange(width + room + 1, device=self.device)
        # Every position any call may ask for, so a decode step slices a view instead of building one.
        self.positions = (column - pads[:, None]).clamp(min=0)  # (b, t)
        self.valid = column[None, :width] >= pads[:, None] if bool(pads.any()) else None  # (b, n_prompt)
        self.prefix_len = width - pads  # (b,)

    def valid_at(self, start: int, n: int) -> torch.Tensor | None:
        valid = None if self.valid is None or start >= self.valid.shape[1] else self.valid[:, start : start + n]
        if valid is not None and valid.shape[1] < n:
            valid = torch.cat([valid, valid.new_ones(valid.shape[0], n - valid.shape[1])], dim=1)
        return valid

    def call(self, tokens: torch.Tensor, *, positions: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        return self.model(tokens, positions=positions, valid=valid, prefix_len=self.prefix_len, cache=self.cache)


def refuse_infilling(arch: str) -> None:
    """The one-line refusal of a blank to fill (``blank_id``) by an architecture that cannot fill one."""
    raise ConfigError(
        "model", arch,
        "a prefix decoder trained with objective=blank_infilling (model=prefix, model/pos=learned_2d or rope_2d) to fill a blank <mask>",
    )  # fmt: skip


class InfillSession(LMSession):
    """GLM's blank infilling on a prefix decoder (Du et al. 2022, arXiv:2103.10360, section 2.2).

    Each prompt is Part A: a text holding one or more blanks (``blank_id``, the tokenizer's ``<mask>``).
    The session lays it out as ``objective=blank_infilling`` trains: Part A is the bidirectional prefix
    at 2D positions ``(index, 0)``; then ``start_id`` (``[S]``) and the first blank's span, left to right,
    at ``(index of the blank, 1), (index of the blank, 2), ...``. The new tokens are the span; a model
    trained so ends it with ``[E]`` (``end_id``, pass it as ``eos_id`` too). With several blanks the spans
    follow one another in the blanks' order, as Part B holds spans in training: the ``[E]`` that ends a
    span is fed as the next blank's ``[S]`` (in training ``[E]`` is only ever a target), at
    ``(index of that blank, 1)``; the new tokens are then the spans, each ended by its ``[E]``. Which span
    each column reached is kept, so taking tokens back (speculative decoding) takes back the spans they began.

    Prompts are left-padded, so every Part A ends in the same column: the model reads its mask and
    cache in column order when given 2D positions (they are not in reading order), so the prefix is
    that many columns in every row, and padding is masked out as keys.

    Args:
        model: a prefix decoder whose position schemes take 2D positions.
        prompts: Part A of each sequence, each holding ``blank_id`` at least once.
        pad_id, room, rollback: as in :class:`LMSession`.
        blank_id: the blank to fill.
        start_id: the token that starts a span (``[S]``).
        end_id: the token that ends a span (``[E]``); needed when a prompt holds more than one blank.

    Shapes: :meth:`feed` takes ``(b, n)`` tokens and returns ``(b, n, v)`` logits; :attr:`positions`
    is ``(b, t, 2)``.
    """

    # the forward reads a 2D-positioned token's column from the eager cache's length, which a static
    # cache keeps in a tensor: infilling decodes on the eager cache
    static_steps = False

    def __init__(
        self, model: nn.Module, prompts: list[list[int]], *, pad_id: int, blank_id: int, start_id: int, end_id: int | None = None,
        room: int, rollback: int = 0,
    ) -> None:  # fmt: skip
        blanks = [p.count(blank_id) for p in prompts]
        if any(n < 1 for n in blanks):
            raise ConfigError("generate.prompts", f"blanks per prompt {blanks}", f"at least one blank (id {blank_id}, <mask>) in each prompt to infill")
        if max(blanks) > 1 and end_id is None:
            raise ConfigError("generate.eos_id", None, "the id of [E] when a prompt holds several blanks: it ends each span, and the next begins")
        super().__init__(model, [[*p, start_id] for p in prompts], pad_id=pad_id, room=room, rollback=rollback)
        width = self.prompt.shape[1] - 1  # Part A's columns, padding included; [S] is the next
        pads = width - torch.tensor([len(p) for p in prompts], device=self.device)
        # each blank's index in Part A, in order; a row with fewer blanks repeats its last (never reached)
        at = [[i for i, t in enumerate(p) if t == blank_id] for p in prompts]
        self.blank_at = torch.tensor([a + a[-1:] * (max(blanks) - len(a)) for a in at], device=self.device)  # (b, blanks)
        column = torch.arange(self.positions.shape[1], device=self.device)[None]
        position = torch.where(column < width, column - pads[:, None], self.blank_at[:, :1]).clamp(min=0)
        intra = (column - width + 1).clamp(min=0).expand_as(position)  # 0 in Part A, then 1 at [S], 2, ...
        self.positions = torch.stack([position, intra], dim=-1)  # (b, t, 2): the prompt's are read; feed places the rest
        self.prefix_len = torch.full_like(self.prefix_len, width)
        self.ends_needed = torch.tensor(blanks, device=self.device)
        self.start_id = start_id
        self.end_id = -1 if end_id is None else end_id  # one blank needs no [E] to begin another: -1 is no token
        # (spans begun, intra-span id) after each column: the prompt's [S] began the first span at id 1;
        # kept per column so that taking tokens back (a draft's rejected guesses) restores the span reached
        self.spans = torch.ones(*self.positions.shape[:2], 2, dtype=torch.long, device=self.device)  # (b, t, 2)

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """As :meth:`Session.feed`; past the prompt each token takes the 2D position of the span it is in, and
        with several blanks a span's ``[E]`` is fed as the next blank's ``[S]``."""
        start, n = self.fed, tokens.shape[1]
        if start < self.prompt.shape[1]:  # Part A and the first [S], as laid out when the session opened
            return super().feed(tokens)
        fed, positions = tokens.clone(), []
        begun, intra = self.spans[:, start - 1].unbind(-1)
        for i in range(n):
            next_span = (tokens[:, i] == self.end_id) & (begun < self.ends_needed)
            fed[:, i] = torch.where(next_span, self.start_id, tokens[:, i])
            begun = begun + next_span.long()
            intra = torch.where(next_span, 1, intra + 1)
            self.spans[:, start + i] = torch.stack([begun, intra], dim=-1)
            blank = self.blank_at.gather(1, (begun - 1)[:, None])[:, 0]
            positions.append(torch.stack([blank, intra], dim=-1))
        logits = self.call(fed, positions=torch.stack(positions, dim=1), valid=self.valid_at(start, n))
        self.fed = start + n
        return logits


class EncDecSession(Session):
    """An encoder-decoder: the source is encoded once; the decoder starts from ``start_id``.

    Sources are right-padded (the encoder counts positions from 0 for every row) and masked by
    ``src_valid``; the decoder's cross-attention keys are computed at its first step and cached.

    Args:
        model: an encoder-decoder (``encode`` and ``decode``).
        prompts: source token ids per sequence (any lengths).
        pad_id: the id written into padding.
        start_id: the decoder's first token.
        room, rollback: as in :class:`Session`.

    Shapes: :meth:`feed` takes ``(b, n)`` decoder tokens and returns ``(b, n, v)`` logits.
    """

    def __init__(
        self, model: nn.Module, prompts: list[list[int]], *, pad_id: int, start_id: int, room: int, rollback: int = 0
    ) -> None:
        super().__init__(model, room=room, rollback=rollback)
        src, pads = pad_batch(prompts, pad_id=pad_id, left=False, device=self.device)
        self.src_valid = None
        if bool(pads.any()):
            self.src_valid = torch.arange(src.shape[1], device=self.device)[None] < (src.shape[1] - pads)[:, None]
        self.memory = model.encode(src, src_valid=self.src_valid)
        self.prompt = torch.full((src.shape[0], 1), start_id, device=self.device)
        self.open(1)
        self.positions = torch.arange(1 + room + 1, device=self.device)[None]

    def call(self, tokens: torch.Tensor, *, positions: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        return self.model.decode(tokens, self.memory, src_valid=self.src_valid, positions=positions, cache=self.cache)
