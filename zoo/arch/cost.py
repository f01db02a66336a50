"""What a built model costs: parameters, and forward FLOPs per token broken down per component.

The one counter of the project: training metrics (W&B), ``zoo-bench`` and ``zoo-info --cost`` all
ask the model (``model.flops(seq_len=...)``, ``model.param_counts()``), and the architectures answer
through the functions here.

Counted from the built modules' weight shapes (so plugins count too), not traced: a matmul of an
``(n, i)`` input by an ``(i, o)`` weight costs ``2 n i o`` FLOPs. Attention scores cost
``2 * 2 * n * m * h * d`` (``q k^T`` and the weighted sum of ``v``) for ``n`` queries over ``m`` keys,
counted dense as in PaLM's MFU (Chowdhery et al. 2022, arXiv:2204.02311, App. B) and as
``torch.utils.flop_counter`` counts SDPA: a causal mask is not halved; a sliding window counts
``min(window, n)`` keys (``min(2 window - 1, n)`` in a bidirectional stack, where it reaches both
ways), a sparse pattern (:mod:`zoo.attention.sparse`) the most keys it lets a query see; a recurrent
mixer counts its chunked recurrence (linear in ``n``). Norms, activations, softmax, biases and position
schemes are elementwise and left out (< 1% at the sizes benchmarked). A backward pass costs twice the
forward.

A module that answers ``active_params()`` (a Mixture-of-Experts FFN: the parameters one token passes
through) is counted by its active parameters; its total parameters still count in ``params``.
"""

from dataclasses import dataclass

from torch import nn

COMPONENTS = ("attn_proj", "attn_scores", "ffn", "lm_head")


@dataclass
class FlopCount:
    """Forward FLOPs of one sequence per component, and the tokens it covers.

    Args:
        attn_proj: query/key/value/output projections (self- and cross-attention).
        attn_scores: ``q k^T`` and ``weights @ v``.
        ffn: the feed-forward networks (MoE: active experts and router).
        lm_head: the output projection to the vocabulary.
        tokens: tokens the sequence holds (source plus target for an encoder-decoder).
    """

    attn_proj: float = 0.0
    attn_scores: float = 0.0
    ffn: float = 0.0
    lm_head: float = 0.0
    tokens: int = 1

    @property
    def total(self) -> float:
        return self.attn_proj + self.attn_scores + self.ffn + self.lm_head

    def per_token(self) -> dict[str, float]:
        """Forward FLOPs per token, per component and ``total``."""
        out = {name: getattr(self, name) / self.tokens for name in COMPONENTS}
        out["total"] = self.total / self.tokens
        return out

    def __add__(self, other: "FlopCount") -> "FlopCount":
        parts = {name: getattr(self, name) + getattr(other, name) for name in COMPONENTS}
        return FlopCount(**parts, tokens=self.tokens + other.tokens)


def n_params(module: nn.Module | None) -> int:
    """Unique parameters of ``module`` (a tied matrix once)."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def linear_weights(module: nn.Module | None) -> int:
    """Weight entries of every ``nn.Linear`` inside ``module`` (biases left out)."""
    if module is None:
        return 0
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def active_params(module: nn.Module) -> int:
    """Parameters one token passes through: the module's own ``active_params()`` where it says so."""
    active = getattr(module, "active_params", None)
    return int(active()) if callable(active) else n_params(module)


def ffn_weights(ffn: nn.Module) -> int:
    """Matmul weights one token passes through: the active ones for a MoE that says so."""
    active = getattr(ffn, "active_params", None)
    return int(active()) if callable(active) else linear_weights(ffn)


def cached_keys(attn: nn.Module, n_keys: int) -> int:
    """Keys the layer's cache holds after ``n_keys`` tokens: all, or its ``window`` (a ring buffer)."""
    window = getattr(attn, "window", None)
    return n_keys if window is None else min(window, n_keys)


def attention_keys(attn: nn.Module, n_keys: int, *, causal: bool = True) -> int:
    """Keys one query scores: all ``n_keys``, the layer's ``window`` of them (those before the query; in a
    bidirectional stack, ``causal=False``, those on either side too), or at most what its sparse ``pattern``
    lets a query see (the cache still holds every key: the pattern picks among them)."""
    pattern = getattr(attn, "pattern", None)
    window = getattr(attn, "window", None)
    keys = cached_keys(attn, n_keys) if causal or window is None else min(2 * window - 1, n_keys)
    return keys if pattern is None else min(keys, pattern.keys_per_query(n_keys))


def score_flops(attn: nn.Module, n_queries: int, n_keys: int, *, causal: bool = True) -> float:
    """``q k^T`` and ``weights @ v`` over the keys each query scores: the layer's own ``score_flops(n_queries,
    n_keys)`` where it says so (random features, retention, a selective SSM: no pairs; latent attention: the
    form it runs at those sizes), else per query-key pair its own ``flops_per_pair()`` where it says so
    (differential attention), else ``4 * n_heads * head_dim``."""
    own = getattr(attn, "score_flops", None)
    if callable(own):
        return float(own(n_queries, n_keys))
    per_pair = getattr(attn, "flops_per_pair", None)
    if callable(per_pair):
        pair = float(per_pair())
    else:
        pair = 4.0 * getattr(attn, "n_heads", 0) * getattr(attn, "head_dim", 0)
    return n_queries * attention_keys(attn, n_keys, causal=causal) * pair


def layer_flops(layer: nn.Module, *, n: int, memory_len: int | None = None, causal: bool = True) -> FlopCount:
    """Forward FLOPs of one block over ``n`` tokens (cross-attending to ``memory_len``) of a causal or
    bidirectional stack: its own window and FFN."""
    count = FlopCount(tokens=n)
    attn, cross = layer.attn, getattr(layer, "cross_attn", None)
    count.attn_proj += 2.0 * n * linear_weights(attn)
    count.attn_scores += score_flops(attn, n, n, causal=causal)
    if cross is not None:
        # queries and the output projection run on the decoder's tokens, keys and values on the memory's
        q_o = cross.q_proj.weight.numel() + cross.o_proj.weight.numel()
        count.attn_proj += 2.0 * (n * q_o + memory_len * (linear_weights(cross) - q_o))
        count.attn_scores += score_flops(cross, n, memory_len)
    count.ffn += 2.0 * n * ffn_weights(layer.ffn)
    return count


def layer_decode_flops(layer: nn.Module, *, n: int, memory_len: int | None = None) -> float:
    """Forward FLOPs of one block for one decoding step: token ``n`` against the ``n`` keys its cache
    then holds. Every weight once and the scores of one query (:func:`score_flops` at ``(1, n)``:
    latent attention answers for the form it decodes with); cross-attention's keys and values are
    cached, so only its query and output projections and its scores over ``memory_len``."""
    attn, cross = layer.attn, getattr(layer, "cross_attn", None)
    flops = 2.0 * linear_weights(attn) + score_flops(attn, 1, n) + 2.0 * ffn_weights(layer.ffn)
    if cross is not None:
        flops += 2.0 * (cross.q_proj.weight.numel() + cross.o_proj.weight.numel()) + score_flops(cross, 1, memory_len)
    return flops


def stack_flops(stack: nn.Module, *, n: int, memory_len: int | None = None) -> FlopCount:
    """Forward FLOPs of a :class:`~zoo.arch.Stack` over ``n`` tokens (cross-attending to ``memory_len``)."""
    count = FlopCount(tokens=n)
    for layer in stack.layers:
        part = layer_flops(layer, n=n, memory_len=memory_len, causal=stack.causal)
        for name in COMPONENTS:
            setattr(count, name, getattr(count, name) + getattr(part, name))
    return count


def kv_cache_bytes(attn: nn.Module, n: int) -> int:
    """Bytes of keys and values one sequence's cache holds for ``attn`` after ``n`` tokens: every key,
    or the last ``window`` (a ring buffer), at the projections' dtype; or the layer's own ``cache_bytes(n)``
    where it says so (a recurrent mixer's state, random features' running sums: the same at any ``n``)."""
    own = getattr(attn, "cache_bytes", None)
    if callable(own):
        return int(own(n))
    weight = attn.k_proj.weight
    return 2 * cached_keys(attn, n) * attn.n_kv_heads * attn.head_dim * weight.element_size()


def takes_positions(attn: nn.Module) -> bool:
    """Whether the stack's position scheme reaches ``attn`` (rotates or biases it): its own ``takes_positions``
    where it says so (a mixer that carries the order itself: ``mamba2``, ``based``), else yes."""
    return getattr(attn, "takes_positions", True)


def layer_costs(stack: nn.Module, *, n: int, memory_len: int | None = None, cached: bool = True, name: str = "") -> list[dict]:
    """One row per block of ``stack`` at ``n`` tokens: its kind (:mod:`zoo.arch.pattern`), window, FFN
    and position classes (``none (mixer)`` where the mixer takes no positions), parameters, forward FLOPs
    per token, and, when decoding (``cached``), the FLOPs of the step that writes token ``n``
    (:func:`layer_decode_flops`; else ``None``) and the bytes its KV cache holds for one sequence
    (self-attention if ``cached``, plus cross-attention over ``memory_len``)."""
    kinds = stack.layer_kinds()
    rows = []
    for i, layer in enumerate(stack.layers):
        pos = stack.kind_pos[kinds[i]] if kinds[i] in stack.kind_pos else stack.pos
        rows.append({
            "layer": f"{name}{i}",
            "kind": kinds[i],
            "window": getattr(layer.attn, "window", None),
            "ffn": type(layer.ffn).__name__,
            "pos": type(pos).__name__ if takes_positions(layer.attn) else "none (mixer)",
            "params": n_params(layer),
            "flops_per_token": layer_flops(layer, n=n, memory_len=memory_len, causal=stack.causal).total / n,
            "decode_flops": layer_decode_flops(layer, n=n, memory_len=memory_len) if cached else None,
            "kv_cache_bytes": (kv_cache_bytes(layer.attn, n) if cached else 0)
            + (kv_cache_bytes(layer.cross_attn, memory_len) if getattr(layer, "cross_attn", None) is not None else 0),
        })  # fmt: skip
    return rows


def head_flops(lm_head: nn.Module, n: int) -> float:
    """The LM head over ``n`` tokens (a tied head is still a matmul)."""
    return 2.0 * n * linear_weights(lm_head)


def param_counts(model: nn.Module) -> dict[str, int]:
    """``params`` (unique, tied weights once), ``active_params`` (MoE: the experts a token uses) and
    ``embedding_params`` (token embedding and an untied head)."""
    total = n_params(model)
    inactive = sum(n_params(m) - active_params(m) for m in model.modules() if callable(getattr(m, "active_params", None)))
    embedding = model.embed.weight.numel()
    if model.lm_head.weight is not model.embed.weight:
        embedding += model.lm_head.weight.numel()
    return {"params": total, "active_params": total - inactive, "embedding_params": embedding}


def training_flops_per_token(model: nn.Module, *, seq_len: int) -> float:
    """Forward plus backward (twice the forward) FLOPs per token of ``model.flops(seq_len=...)``."""
    return 3.0 * model.flops(seq_len=seq_len).per_token()["total"]


def cost_report(model: nn.Module, *, seq_len: int) -> dict[str, float]:
    """Parameters, per-token forward FLOPs per component (``flops_<component>``, ``flops_total``) and
    ``train_flops_per_token``, flat, for a results row, a log line or ``zoo-info --cost``."""
    out: dict[str, float] = dict(model.param_counts())
    out.update({f"flops_{k}": v for k, v in model.flops(seq_len=seq_len).per_token().items()})
    out["train_flops_per_token"] = training_flops_per_token(model, seq_len=seq_len)
    return out
