"""The encoder-decoder (T5-style): a bidirectional encoder, and a causal decoder that cross-attends to it."""

from collections.abc import Callable, Sequence

import torch
from torch import nn

from zoo.arch import cost
from zoo.arch.pattern import LayerPattern
from zoo.arch.protocol import Example, device_of
from zoo.arch.session import EncDecSession, refuse_infilling
from zoo.arch.stack import Factory, Stack, default_positions, head_dim_of
from zoo.attention.cache import LayerCache
from zoo.attention.mask import Mask
from zoo.ffn.moe import losses as moe_losses
from zoo.residual import Depth


class EncoderDecoder(nn.Module):
    """Encoder-decoder Transformer (Vaswani et al. 2017; T5, Raffel et al. 2019, arXiv:1910.10683).

    Encoder and decoder share the token embedding and each has its own position scheme (T5's
    relative bias differs between a bidirectional and a causal stack).

    Args:
        vocab_size, dim, n_heads, head_dim, max_seq_len, dropout: as in :class:`~zoo.arch.lm.TransformerLM`.
        n_layers: encoder layers.
        n_decoder_layers: decoder layers; ``None`` means ``n_layers``.
        attention, cross_attention, ffn, norm, residual, pos, init: the slot factories.
        tie_embeddings: share the embedding with the LM head.
        logit_scale: multiply the decoder output before the head (T5 v1.0 uses ``dim ** -0.5`` when tied).
        layers: the per-layer pattern (``model/layers``, :mod:`zoo.arch.pattern`) of the encoder, and of
            the decoder unless ``decoder_layers`` is given; ``None``: every layer alike. Each stack
            cycles the pattern over its own layers.
        decoder_layers: the decoder's own pattern (``model/layers@model.decoder_layers=<option>``);
            ``None``: ``layers``.

    Shapes: ``src (b, n_src)``, ``tgt (b, n_tgt)`` -> logits ``(b, n_tgt, vocab_size)``.

    It answers :class:`~zoo.arch.protocol.Architecture`: example inputs, decoding sessions, costs.
    """

    arch = "encdec"
    causal = True
    can_generate = True
    #: a prompt is the source; the output is a new sequence decoded from ``start_id``
    continues_prompt = False
    has_bidirectional_stack = True
    cross_attends = True
    #: a task head reads the encoder, which is bidirectional
    feature_pool = "mean"

    def __init__(
        self,
        *,
        vocab_size: int,
        dim: int,
        n_layers: int,
        n_decoder_layers: int | None = None,
        n_heads: int,
        head_dim: int | None = None,
        max_seq_len: int,
        attention: Factory,
        cross_attention: Factory,
        ffn: Factory,
        norm: Factory,
        residual: Factory,
        pos: Factory,
        init: Callable[..., None],
        tie_embeddings: bool = True,
        logit_scale: float = 1.0,
        final_norm: bool | None = None,
        dropout: float = 0.0,
        layers: LayerPattern | None = None,
        decoder_layers: LayerPattern | None = None,
    ) -> None:
        super().__init__()
        n_decoder_layers = n_layers if n_decoder_layers is None else n_decoder_layers
        self.vocab_size, self.dim, self.max_seq_len, self.logit_scale = vocab_size, dim, max_seq_len, logit_scale
        self.n_layers = n_layers + n_decoder_layers
        self.embed = nn.Embedding(vocab_size, dim)
        shared = dict(
            n_heads=n_heads,
            head_dim=head_dim_of(dim, n_heads, head_dim),
            max_seq_len=max_seq_len,
            attention=attention,
            ffn=ffn,
            norm=norm,
            residual=residual,
            pos=pos,
            dropout=dropout,
            final_norm=final_norm,
        )
        self.encoder = Stack(
            dim, n_layers=n_layers, causal=False, depth=Depth("encoder", n_layers, n_decoder_layers), layers=layers, **shared
        )
        self.decoder = Stack(
            dim,
            n_layers=n_decoder_layers,
            causal=True,
            depth=Depth("decoder", n_layers, n_decoder_layers),
            cross_attention=cross_attention,
            layers=layers if decoder_layers is None else decoder_layers,
            layers_key="model.layers" if decoder_layers is None else "model.decoder_layers",
            **shared,
        )
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        init(self, n_layers=self.n_layers)
        if tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def encode(self, src: torch.Tensor, *, src_valid: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """``src (b, n_src)`` -> encoder output ``(b, n_src, dim)``; ``positions (b, n_src)`` default ``0..n_src-1``."""
        positions = default_positions(src.shape[1], src.device) if positions is None else positions
        return self.encoder(self.embed(src), positions=positions, mask=Mask(key_valid=src_valid))

    def features(self, tokens: torch.Tensor, *, valid: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's output over whole texts: a task head's input (:mod:`zoo.finetune.classify`), as an
        encoder-decoder's encoder serves classification (Sentence-T5, arXiv:2108.08877)."""
        return self.encode(tokens, src_valid=valid, positions=positions)

    def decode(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        *,
        src_valid: torch.Tensor | None = None,
        tgt_valid: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: list[LayerCache] | None = None,
    ) -> torch.Tensor:
        """Logits ``(b, n_tgt, vocab)`` of the decoder over ``memory``; ``cache`` makes it incremental."""
        if positions is None:
            offset = cache[0].self_attn.seen if cache else 0
            positions = default_positions(tgt.shape[1], tgt.device, offset)
        x = self.decoder(
            self.embed(tgt),
            positions=positions,
            mask=Mask(causal=True, key_valid=tgt_valid),
            memory=memory,
            memory_valid=src_valid,
            cache=cache,
        )
        return self.lm_head(x * self.logit_scale)

    def forward(
        self,
        src: torch.Tensor,
        tgt: torch.Tensor,
        *,
        src_valid: torch.Tensor | None = None,
        tgt_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        memory = self.encode(src, src_valid=src_valid)
        return self.decode(tgt, memory, src_valid=src_valid, tgt_valid=tgt_valid)

    def aux_loss(self) -> torch.Tensor | None:
        """The mixture-of-experts losses of the latest forward, summed over layers (``None`` without MoE)."""
        return moe_losses.aux_loss(self)

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Each auxiliary loss of the latest forward, summed over layers, for logging."""
        return moe_losses.aux_losses(self)

    def new_cache(self) -> list[LayerCache]:
        return self.decoder.new_cache()

    def example(self, *, batch: int, length: int, generator: torch.Generator | None = None) -> Example:
        """A random source and target of ``length`` tokens each, on the model's device."""
        device = device_of(self)
        src = torch.randint(0, self.vocab_size, (batch, length), generator=generator).to(device)
        tgt = torch.randint(0, self.vocab_size, (batch, length), generator=generator).to(device)
        return Example({"src": src, "tgt": tgt}, "tgt", 0, 2 * batch * length)

    def input_length(self, seq_len: int) -> int:
        # either side sees at most the whole row plus its <eos>
        return seq_len + 1

    def open_session(
        self, prompts: list[list[int]], *, pad_id: int, start_id: int, room: int, rollback: int = 0, blank_id: int | None = None,
        end_id: int | None = None,
    ) -> EncDecSession:
        """The prompts encoded once as right-padded sources; the decoder starts from ``start_id``.
        A blank to fill (``blank_id``) is refused: span corruption writes spans after sentinels, not blanks."""
        if blank_id is not None:
            refuse_infilling(self.arch)
        return EncDecSession(self, prompts, pad_id=pad_id, start_id=start_id, room=room, rollback=rollback)

    def uncached_next_logits(self, prompt: Sequence[int], generated: Sequence[int], *, start_id: int = 0) -> torch.Tensor:
        device = device_of(self)
        src = torch.tensor([list(prompt)], device=device)
        tgt = torch.tensor([[start_id, *generated]], device=device)
        return self(src, tgt)[0, -1]

    def flops(self, *, seq_len: int, src_len: int | None = None) -> cost.FlopCount:
        """Forward FLOPs of ``seq_len`` target tokens over ``src_len`` (default ``seq_len``) source
        tokens; per-token figures divide by source plus target tokens."""
        src_len = seq_len if src_len is None else src_len
        count = cost.stack_flops(self.encoder, n=src_len) + cost.stack_flops(self.decoder, n=seq_len, memory_len=src_len)
        count.lm_head = cost.head_flops(self.lm_head, seq_len)
        return count

    def param_counts(self) -> dict[str, int]:
        return cost.param_counts(self)

    def layer_costs(self, *, seq_len: int, src_len: int | None = None) -> list[dict]:
        """The encoder's blocks (``enc0``...) over ``src_len`` tokens, then the decoder's (``dec0``...)."""
        src_len = seq_len if src_len is None else src_len
        return cost.layer_costs(self.encoder, n=src_len, cached=False, name="enc") + cost.layer_costs(
            self.decoder, n=seq_len, memory_len=src_len, name="dec"
        )
