"""Single-stack language models: causal decoder, prefix decoder, and encoder-only.

They differ only in the mask they build (x-transformers' insight): all three share
:class:`TransformerLM`.
"""

from collections.abc import Callable, Sequence

import torch
from torch import nn

from zoo.arch import cost
from zoo.arch.protocol import Example, device_of
from zoo.arch.pattern import LayerPattern
from zoo.arch.session import InfillSession, LMSession, refuse_infilling
from zoo.arch.stack import Factory, Stack, default_positions, document_positions, head_dim_of
from zoo.attention.cache import LayerCache
from zoo.attention.mask import Mask
from zoo.dropout import identity
from zoo.errors import ConfigError
from zoo.ffn.moe import losses as moe_losses
from zoo.pos.base import can_read
from zoo.residual import Depth
from zoo.softcap import SoftCap


class TransformerLM(nn.Module):
    """Token embedding, one :class:`~zoo.arch.stack.Stack`, and a language-model head.

    Args:
        vocab_size: tokens in the vocabulary.
        dim: model width.
        n_layers: blocks.
        n_heads: attention heads.
        head_dim: width of one head; ``None`` means ``dim // n_heads``.
        max_seq_len: the longest sequence the model is built for (learned positions stop there).
        attention, ffn, norm, residual, pos: the slot factories (``model/<slot>`` config groups).
        init: the weight init scheme (``model/init``), called on the built model.
        tie_embeddings: share the embedding matrix with the LM head.
        embed_norm: a norm right after the embedding (BLOOM).
        final_norm: a norm after the last block; ``None`` follows the residual wiring.
        dropout: residual, attention, FFN and embedding dropout.
        logit_softcap: soft-cap of the final logits, ``cap * tanh(logits / cap)`` (Gemma 2: 30,
            arXiv:2408.00118; :class:`zoo.softcap.SoftCap`); ``None``: none.
        scale_embed: multiply the token embeddings by ``sqrt(dim)`` (Vaswani et al. 2017,
            arXiv:1706.03762, section 3.4; Gemma): a tied head then reads the unscaled matrix.
        layers: per-layer kinds that override slots (``model/layers``, :mod:`zoo.arch.pattern`);
            ``None``: every layer alike.

    Shapes: tokens ``(b, n)`` -> logits ``(b, n, vocab_size)``.

    It answers :class:`~zoo.arch.protocol.Architecture`: example inputs, decoding sessions, costs.
    """

    #: the architecture's name, as in ``model=<arch>``
    arch: str = ""
    causal: bool = True
    can_generate: bool = True
    continues_prompt: bool = True
    has_bidirectional_stack: bool = False
    cross_attends: bool = False
    #: how a task head summarises :meth:`features` unless told: a causal reader by its last real token
    feature_pool: str = "last"
    #: whether a packed row's positions restart at each document (``segments``), so each document is
    #: positioned as if alone; every position scheme takes any positions
    restarts_positions: bool = True

    def __init__(
        self,
        *,
        vocab_size: int,
        dim: int,
        n_layers: int,
        n_heads: int,
        head_dim: int | None = None,
        max_seq_len: int,
        attention: Factory,
        ffn: Factory,
        norm: Factory,
        residual: Factory,
        pos: Factory,
        init: Callable[..., None],
        tie_embeddings: bool = True,
        embed_norm: bool = False,
        final_norm: bool | None = None,
        dropout: float = 0.0,
        layers: LayerPattern | None = None,
        logit_softcap: float | None = None,
        scale_embed: bool = False,
    ) -> None:
        super().__init__()
        if logit_softcap is not None and not logit_softcap > 0:
            raise ConfigError("model.logit_softcap", logit_softcap, "a positive cap on the logits (Gemma 2: 30.0), or null for none")
        self.vocab_size, self.dim, self.n_layers, self.max_seq_len = vocab_size, dim, n_layers, max_seq_len
        self.embed = nn.Embedding(vocab_size, dim)
        self.embed_scale = dim**0.5 if scale_embed else None
        depth = Depth(stack="decoder" if self.causal else "encoder", encoder_layers=0 if self.causal else n_layers, decoder_layers=n_layers if self.causal else 0)
        self.stack = Stack(
            dim,
            n_layers=n_layers,
            n_heads=n_heads,
            head_dim=head_dim_of(dim, n_heads, head_dim),
            max_seq_len=max_seq_len,
            causal=self.causal,
            attention=attention,
            ffn=ffn,
            norm=norm,
            residual=residual,
            pos=pos,
            depth=depth,
            dropout=dropout,
            embed_norm=embed_norm,
            final_norm=final_norm,
            layers=layers,
        )
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        self.logit_cap = identity if logit_softcap is None else SoftCap(logit_softcap)
        init(self, n_layers=n_layers)
        if tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def mask(self, *, positions: torch.Tensor, prefix_len: torch.Tensor | None, valid: torch.Tensor | None) -> Mask:
        """The mask rule for tokens at ``positions (b, n)``."""
        raise NotImplementedError

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        prefix_len: torch.Tensor | None = None,
        cache: list[LayerCache] | None = None,
        hidden: bool = False,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits for ``tokens (b, n)``.

        Args:
            positions: ``(b, n)`` positions; default ``0..n-1`` after what ``cache`` holds, or with
                ``segments`` (and :attr:`restarts_positions`) counted from each document's start.
                Or GLM's 2D positions ``(b, n, 2)`` (position id, intra-span id; blank infilling,
                arXiv:2103.10360): the position scheme encodes them (it must be two-dimensional), while
                the mask and the cache read the tokens in row order, ``0..n-1`` after what ``cache`` holds.
            valid: ``(b, n)`` ``False`` at padding tokens.
            prefix_len: ``(b,)`` prefix lengths (prefix decoder only).
            cache: from :meth:`new_cache`, updated in place.
            hidden: return the last hidden states ``(b, n, dim)`` instead of the logits (a task head's input).
            segments: ``(b, n)`` document ids of a packed row (``data.boundaries=mask``): a token
                attends only within its document.
        """
        if segments is not None and cache is not None:
            raise ValueError("segments (document masking of packed rows) is for training and scoring, not for a KV cache")
        pos_ids = None
        if positions is not None and positions.dim() == 3:
            # 2D ids are not in reading order (a span's tokens share its [MASK]'s position id), so
            # causality and the prefix are read from each token's index in the row
            self.check_2d_positions()
            pos_ids, positions = positions, None
        if positions is None and segments is not None and self.restarts_positions:
            positions = document_positions(segments)
        elif positions is None:
            offset = cache[0].self_attn.seen if cache else 0
            positions = default_positions(tokens.shape[1], tokens.device, offset)
        mask = self.mask(positions=positions, prefix_len=prefix_len, valid=valid)
        if segments is not None:
            mask = mask.within(segments)
        x = self.embed(tokens)
        x = x if self.embed_scale is None else x * self.embed_scale
        x = self.stack(x, positions=positions, mask=mask, cache=cache, pos_ids=pos_ids)
        return x if hidden else self.logit_cap(self.lm_head(x))

    def check_2d_positions(self) -> None:
        """Raise :class:`~zoo.errors.ConfigError` unless this model's position schemes take GLM's 2D positions."""
        self.stack.check_2d_positions()

    def aux_loss(self) -> torch.Tensor | None:
        """The mixture-of-experts losses of the latest forward, summed over layers (``None`` without MoE)."""
        return moe_losses.aux_loss(self)

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Each auxiliary loss of the latest forward, summed over layers, for logging."""
        return moe_losses.aux_losses(self)

    def new_cache(self) -> list[LayerCache]:
        if not self.can_generate:
            raise ConfigError("model", self.arch, "an encoder-only model cannot generate: use model=causal, prefix or encdec")
        return self.stack.new_cache()

    def example(self, *, batch: int, length: int, generator: torch.Generator | None = None) -> Example:
        """Random ``tokens (batch, length)`` on the model's device (drawn on the CPU, so a seed repeats anywhere)."""
        tokens = torch.randint(0, self.vocab_size, (batch, length), generator=generator)
        return Example({"tokens": tokens.to(device_of(self))}, "tokens", 0 if self.causal else None, batch * length)

    def input_length(self, seq_len: int) -> int:
        return seq_len

    def features(self, tokens: torch.Tensor, *, valid: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states ``(b, n, dim)`` of whole texts, each row's ``valid`` tokens reading one another as
        bidirectionally as this model can: a task head's input (:mod:`zoo.finetune.classify`)."""
        return self(tokens, positions=positions, valid=valid, hidden=True)

    def open_session(
        self, prompts: list[list[int]], *, pad_id: int, start_id: int = 0, room: int, rollback: int = 0, blank_id: int | None = None,
        end_id: int | None = None,
    ) -> LMSession:
        """Prompts left-padded and read whole (a prefix LM's prefix); ``start_id`` and ``end_id`` are unused.
        Only a prefix decoder fills a blank (``blank_id``)."""
        if blank_id is not None:
            refuse_infilling(self.arch)
        return LMSession(self, prompts, pad_id=pad_id, room=room, rollback=rollback)

    def uncached_next_logits(self, prompt: Sequence[int], generated: Sequence[int], *, start_id: int = 0) -> torch.Tensor:
        device = device_of(self)
        seq = torch.tensor([[*prompt, *generated]], device=device)
        return self(seq, prefix_len=torch.tensor([len(prompt)], device=device))[0, -1]

    def flops(self, *, seq_len: int) -> cost.FlopCount:
        count = cost.stack_flops(self.stack, n=seq_len)
        count.lm_head = cost.head_flops(self.lm_head, seq_len)
        return count

    def param_counts(self) -> dict[str, int]:
        return cost.param_counts(self)

    def layer_costs(self, *, seq_len: int) -> list[dict]:
        return cost.layer_costs(self.stack, n=seq_len, cached=self.can_generate)


class CausalLM(TransformerLM):
    """A decoder-only language model: each token sees itself and what came before (GPT, LLaMA)."""

    arch = "causal"

    def mask(self, *, positions, prefix_len=None, valid=None) -> Mask:
        return Mask(causal=True, key_valid=valid)


class PrefixLM(TransformerLM):
    """A prefix decoder (Raffel et al. 2019; Dong et al. 2019, UniLM): bidirectional over a prefix, causal after it.

    ``prefix_len`` is per sequence, so one batch can mix prefix lengths.
    """

    arch = "prefix"
    # the prefix is the row's first prefix_len positions: restarting them per document would turn
    # the start of every document into a bidirectional prefix, and its targets count in the loss
    restarts_positions = False

    def example(self, *, batch: int, length: int, generator: torch.Generator | None = None) -> Example:
        """Random tokens and a random prefix length in ``[1, length)`` per sequence."""
        example = super().example(batch=batch, length=length, generator=generator)
        prefix_len = torch.randint(1, max(length, 2), (batch,), generator=generator)
        example.inputs["prefix_len"] = prefix_len.to(device_of(self))
        example.causal_from = int(prefix_len.max())
        return example

    def features(self, tokens: torch.Tensor, *, valid: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The whole text as the prefix."""
        return self(tokens, positions=positions, valid=valid, prefix_len=valid.sum(1), hidden=True)

    def open_session(
        self, prompts: list[list[int]], *, pad_id: int, start_id: int = 0, room: int, rollback: int = 0, blank_id: int | None = None,
        end_id: int | None = None,
    ) -> LMSession:
        """Prompts read whole as the prefix; with ``blank_id``, GLM's blank infilling: each prompt is
        Part A holding its blanks, and the new tokens are their spans, each from ``start_id`` (``[S]``) on
        and ended by ``end_id`` (``[E]``), at 2D positions (:class:`~zoo.arch.session.InfillSession`)."""
        if blank_id is None:
            return super().open_session(prompts, pad_id=pad_id, start_id=start_id, room=room, rollback=rollback)
        self.check_2d_positions()
        return InfillSession(self, prompts, pad_id=pad_id, blank_id=blank_id, start_id=start_id, end_id=end_id, room=room, rollback=rollback)

    def mask(self, *, positions, prefix_len=None, valid=None) -> Mask:
        if prefix_len is None:
            raise ValueError("PrefixLM needs prefix_len (b,): the number of bidirectional tokens of each sequence")
        # checked where the values can be read (not while compiling: reading them would split the graph)
        if can_read(prefix_len) and can_read(positions) and (int(prefix_len.max()) > int(positions.max()) + 1 or int(prefix_len.min()) < 0):
            raise ValueError(
                f"prefix_len must lie in [0, sequence length {int(positions.max()) + 1}], got {prefix_len.tolist()}"
            )
        return Mask(causal=True, prefix_len=prefix_len, key_valid=valid)


class EncoderLM(TransformerLM):
    """An encoder-only model with a token head, for masked language modelling (BERT)."""

    arch = "encoder"
    causal = False
    can_generate = False
    has_bidirectional_stack = True
    feature_pool = "mean"

    def mask(self, *, positions, prefix_len=None, valid=None) -> Mask:
        return Mask(causal=False, key_valid=valid)
