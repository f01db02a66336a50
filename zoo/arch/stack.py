"""A stack of blocks sharing one position scheme: the body of every architecture."""

from collections.abc import Callable

import torch
from torch import nn

from zoo.attention.attention import Context
from zoo.attention.cache import LayerCache
from zoo.attention.mask import Mask
from zoo.arch.pattern import LayerPattern
from zoo.dropout import dropout_layer, identity
from zoo.errors import ConfigError
from zoo.pos.base import Positions
from zoo.residual import Depth

Factory = Callable[..., nn.Module]


class Stack(nn.Module):
    """``n_layers`` blocks, each built from the slot factories; positions applied once per forward.

    Args:
        dim: model width.
        n_layers: blocks in the stack.
        n_heads: attention heads.
        head_dim: width of one head.
        max_seq_len: the longest sequence the model is built for.
        causal: whether the stack is causal (position schemes may depend on it).
        attention, ffn, norm, residual, pos: the slot factories.
        depth: the whole model's depth (for DeepNorm).
        cross_attention: a factory for cross-attention (decoder of an encoder-decoder).
        dropout: residual, attention and FFN dropout.
        embed_norm: a norm right after the embedding (BLOOM).
        final_norm: a norm after the last block; ``None`` follows the residual wiring.
        layers: the kinds of layers and how each overrides the slots (:mod:`zoo.arch.pattern`);
            ``None``: every layer alike.
        layers_key: where ``layers`` sits in the config (``model.decoder_layers``), for errors.

    Shapes: ``(b, n, dim) -> (b, n, dim)``.
    """

    def __init__(
        self,
        dim: int,
        *,
        n_layers: int,
        n_heads: int,
        head_dim: int,
        max_seq_len: int,
        causal: bool,
        attention: Factory,
        ffn: Factory,
        norm: Factory,
        residual: Factory,
        pos: Factory,
        depth: Depth,
        cross_attention: Factory | None = None,
        dropout: float = 0.0,
        embed_norm: bool = False,
        final_norm: bool | None = None,
        layers: LayerPattern | None = None,
        layers_key: str = "model.layers",
    ) -> None:
        super().__init__()
        self.causal = causal
        sizes = dict(n_heads=n_heads, head_dim=head_dim, max_seq_len=max_seq_len, causal=causal)
        self.pos = pos(dim, **sizes)
        check_pos(self.pos, causal, "model/pos")
        self.pattern = LayerPattern.uniform() if layers is None else layers
        self.pattern.check(key=layers_key)
        self.layers_key = layers_key
        base = dict(attention=attention, ffn=ffn, norm=norm, residual=residual, pos=pos)
        slots = {kind: self.pattern.factories(kind, base, key=layers_key) for kind in dict.fromkeys(self.pattern.pattern)}
        # A kind with its own position scheme rotates (or biases) its layers' attention with it; the
        # embedding, which happens once before the first layer, stays the stack's.
        self.kind_pos = nn.ModuleDict({kind: f["pos"](dim, **sizes) for kind, f in slots.items() if "pos" in self.pattern.overrides(kind)})
        for kind, kind_pos in self.kind_pos.items():
            check_pos(kind_pos, causal, f"{layers_key}.kinds.{kind}.pos")
            if type(kind_pos).embed is not Positions.embed:
                raise ConfigError(
                    f"{layers_key}.kinds.{kind}.pos", type(kind_pos).__name__,
                    "adds to the embedding, which happens once per stack: per kind of layer pick rope, alibi, t5 or none",
                )  # fmt: skip
        self.embed_norm = norm(dim) if embed_norm else identity
        self.dropout = dropout_layer(dropout)
        self.layers = nn.ModuleList(
            self._block(dim, slots[self.pattern.kind(i)], n_heads=n_heads, head_dim=head_dim, dropout=dropout, depth=depth, cross_attention=cross_attention)
            for i in range(n_layers)
        )
        if causal:
            refuse_future(self.layers)
        else:
            keys = [self._slot_key("attention", kind, layers_key) for kind in self.layer_kinds()]
            refuse_bidirectional(self.layers, keys=keys)
        tell_depth(self.layers)
        if final_norm is None:
            final_norm = self.layers[0].final_norm if n_layers else False
        self.norm = norm(dim) if final_norm else identity

    @staticmethod
    def _block(dim: int, f: dict[str, Factory], *, n_heads: int, head_dim: int, dropout: float, depth: Depth, cross_attention: Factory | None) -> nn.Module:
        return f["residual"](
            dim,
            attn=f["attention"](dim, n_heads=n_heads, head_dim=head_dim, dropout=dropout),
            ffn=f["ffn"](dim, dropout=dropout),
            norm=f["norm"],
            cross_attn=None if cross_attention is None else cross_attention(dim, n_heads=n_heads, head_dim=head_dim, dropout=dropout),
            dropout=dropout,
            depth=depth,
        )

    def _slot_key(self, slot: str, kind: str, layers_key: str) -> str:
        """The config key that chose ``slot`` for layers of ``kind``: the kind's override, or the model's slot."""
        return f"{layers_key}.kinds.{kind}.{slot}" if slot in self.pattern.overrides(kind) else f"model/{slot}"

    def layer_kinds(self) -> list[str]:
        """The kind of each layer (``same`` throughout for a uniform stack)."""
        return [self.pattern.kind(i) for i in range(len(self.layers))]

    def forward(
        self,
        x: torch.Tensor,
        *,
        positions: torch.Tensor,
        mask: Mask,
        memory: torch.Tensor | None = None,
        memory_valid: torch.Tensor | None = None,
        cache: list[LayerCache] | None = None,
        pos_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x (b, n, dim)`` -> ``(b, n, dim)``.

        Args:
            positions: ``(b, n)`` or ``(1, n)``: where each token sits, which the mask rule and the cache read.
            mask: the architecture's mask rule.
            memory, memory_valid: the encoder's output and its padding, for cross-attention.
            cache: one :class:`LayerCache` per block, updated in place.
            pos_ids: what the position schemes encode when it is not ``positions``: GLM's 2D positions
                ``(b, n, 2)`` (blank infilling), which are not in reading order; ``None``: ``positions``.
        """
        pos_ids = positions if pos_ids is None else pos_ids
        x = self.dropout(self.embed_norm(self.pos.embed(x, pos_ids)))
        contexts: dict[str, Context] = {}

        def context(kind: str) -> Context:
            if kind not in contexts:
                pos = self.kind_pos[kind] if kind in self.kind_pos else self.pos
                # RoPE's tables are computed once per scheme and forward, not once per layer
                shared = next((c for c in contexts.values() if c.pos is pos), None)
                rotation = shared.rotation if shared is not None else pos.rotation(pos_ids)
                contexts[kind] = Context(
                    positions=positions, mask=mask, pos=pos, memory=memory, memory_valid=memory_valid, rotation=rotation
                )
            return contexts[kind]

        for i, layer in enumerate(self.layers):
            x = layer(x, context(self.pattern.kind(i)), None if cache is None else cache[i])
        return self.norm(x)

    def check_2d_positions(self) -> None:
        """Refuse, in one line, a position scheme of this stack that cannot encode GLM's 2D positions."""
        for key, pos in (("model/pos", self.pos), *((f"{self.layers_key}.kinds.{k}.pos", p) for k, p in self.kind_pos.items())):
            if not pos.two_dimensional:
                raise ConfigError(
                    key, type(pos).__name__,
                    "encodes one position per token; GLM's 2D positions (objective=blank_infilling) need model/pos=learned_2d or rope_2d",
                )  # fmt: skip

    def new_cache(self) -> list[LayerCache]:
        """An empty cache per block: rolling for sliding-window layers, the mixer's own where its
        attention slot says how it caches (``new_cache()``: a recurrent mixer's state)."""
        return [LayerCache(window=getattr(layer.attn, "window", None), self_attn=own_cache(layer.attn)) for layer in self.layers]


def own_cache(attn: nn.Module):
    """The cache ``attn`` makes for itself (``attn.new_cache()``), or ``None`` for a :class:`KVCache`."""
    make = getattr(attn, "new_cache", None)
    return make() if callable(make) else None


def refuse_bidirectional(layers: nn.Module, *, keys: list[str] | None = None) -> None:
    """Refuse a bidirectional stack a mixer that reads left to right (declares ``requires_causal``),
    naming the key that chose it (``keys``: one per layer; ``model/attention`` by default)."""
    for i, layer in enumerate(layers):
        if getattr(layer.attn, "requires_causal", False):
            key = "model/attention" if keys is None else keys[i]
            fix = "use model=causal" if key == "model/attention" else (
                "give this kind another mixer, or the encoder a pattern without it (model=encdec: "
                "model/layers@model.decoder_layers=<option> patterns the decoder alone)"
            )
            raise ConfigError(
                key, getattr(layer.attn, "option", type(layer.attn).__name__),
                f"reads tokens left to right, so a bidirectional stack (an encoder) cannot use it: {fix}",
            )  # fmt: skip


def check_pos(pos: Positions, causal: bool, key: str) -> None:
    """Refuse a position scheme that carries no order in a bidirectional stack (NoPE)."""
    if pos.requires_causal and not causal:
        raise ConfigError(key, type(pos).__name__, "carries no order in a bidirectional stack: pick learned, sinusoidal, rope, alibi or t5")


def refuse_future(layers: nn.Module) -> None:
    """Raise the refusal of the first module of a causal stack that would let a token see later ones.

    A module declares it with ``causal_refusal() -> ConfigError | None`` (expert-choice routing
    does): the model is refused when it is built, before any training.
    """
    for module in layers.modules():
        ask = getattr(module, "causal_refusal", None)
        refusal = ask() if callable(ask) else None
        if refusal is not None:
            raise refusal


def tell_depth(layers: nn.ModuleList) -> None:
    """Tell every module that asks where its block sits: ``at_depth(layer, n_layers)`` with the block's
    0-based index (differential attention's ``lambda_init`` grows with depth)."""
    for i, layer in enumerate(layers):
        for module in layer.modules():
            tell = getattr(module, "at_depth", None)
            if callable(tell):
                tell(i, len(layers))


def head_dim_of(dim: int, n_heads: int, head_dim: int | None) -> int:
    """``head_dim``, defaulting to ``dim // n_heads`` when that divides evenly."""
    if n_heads <= 0:
        raise ConfigError("model.n_heads", n_heads, "must be a positive number of heads")
    if head_dim is not None:
        return head_dim
    if dim % n_heads:
        raise ConfigError("model.n_heads", n_heads, f"must divide model.dim={dim}, or set model.head_dim explicitly")
    return dim // n_heads


def default_positions(n: int, device: torch.device, offset: int = 0) -> torch.Tensor:
    """Positions ``(1, n)`` starting at ``offset`` (the number of tokens already cached)."""
    return torch.arange(offset, offset + n, device=device)[None]


def document_positions(segments: torch.Tensor) -> torch.Tensor:
    """Positions ``(b, n)`` that restart at 0 wherever ``segments (b, n)`` changes: each document of a
    packed row is positioned as if it were alone."""
    index = torch.arange(segments.shape[1], device=segments.device).expand_as(segments)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    return index - (index * starts).cummax(dim=1).values
