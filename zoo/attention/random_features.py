"""Random-feature attention: a linear-cost approximation of softmax attention (``model/attention=performer``).

Performer's FAVOR+ (Choromanski et al. 2020, arXiv:2009.14794), in the family of random feature
attention (Peng et al. 2021, arXiv:2103.02143): ``exp(q . k)`` is the expectation of
``phi(q) . phi(k)`` over Gaussian ``w`` for the positive features
``phi(x) = exp(w x - |x|^2 / 2) / sqrt(r)``, so softmax attention becomes
``phi(q)^T S / phi(q)^T z`` with ``S = sum_j phi(k_j) v_j^T`` and ``z = sum_j phi(k_j)``: ``O(n r d)``
instead of ``O(n^2 d)``. The ``r`` rows of ``w`` are drawn orthogonal (in blocks of ``d``) with
Gaussian lengths, which lowers the estimator's variance; they are fixed at build time and saved with
the weights (a buffer), so a checkpoint reloads the same attention.

Causal attention runs chunk by chunk: inside a chunk the ``c x c`` feature scores are masked like
softmax scores, across chunks the running sums ``S, z`` carry the past. Decoding keeps only those
sums (:class:`FeatureState`, constant size), so a cached step costs the same at any length.
:func:`quadratic_reference` is the obviously-correct form the chunked one is held to.

What it cannot do, refused with one line: a score bias (ALiBi, T5: no scores to add it to), a
window, a prefix (``model=prefix``) or packed documents.

Letters: ``b`` batch, ``k`` KV heads, ``g`` query heads per KV head, ``n`` queries, ``m`` keys, ``d``
head dim, ``r`` random features, ``i``/``j`` queries/keys of one chunk.
"""

import math

import torch
from einops import rearrange
from torch import nn

from zoo.attention.mask import Mask
from zoo.errors import ConfigError

#: a denominator below this is a row that sees no key (pure padding): its output is zero
TINY = 1e-30


def orthogonal_features(n_features: int, head_dim: int) -> torch.Tensor:
    """``(r, d)`` Gaussian directions, orthogonal within each block of ``d`` rows, each row as long as a
    Gaussian vector's (FAVOR+'s orthogonal random features), from the global torch generator."""
    blocks = []
    for _ in range(-(-n_features // head_dim)):
        square, _ = torch.linalg.qr(torch.randn(head_dim, head_dim))
        blocks.append(square.T)
    lengths = torch.randn(n_features, head_dim).norm(dim=1)
    return torch.cat(blocks)[:n_features] * lengths[:, None]


def positive_features(x: torch.Tensor, features: torch.Tensor, *, query: bool) -> torch.Tensor:
    """``phi(x) (..., r)`` of ``x (..., d)``, in float32.

    A query's features are divided by their largest (a per-query constant: it cancels between the
    numerator and the denominator) so they never overflow; a key's cannot be, since a constant that
    differs between keys would not cancel, and one shared by all keys would need the future.
    """
    x = x.float()
    exponent = torch.einsum("...d,rd->...r", x, features.float()) - x.square().sum(-1, keepdim=True) / 2
    if query:
        exponent = exponent - exponent.amax(-1, keepdim=True).detach()
    return torch.exp(exponent) / math.sqrt(features.shape[0])


def causal_chunks(
    fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, state: torch.Tensor, norm: torch.Tensor, *, chunk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal linear attention of ``fq (b, k, g, n, r)`` over ``fk (b, k, n, r)``, ``v (b, k, n, d)`` after
    the running sums ``state (b, k, r, d)``, ``norm (b, k, r)``: ``(numerator (b, k, g, n, d), state, norm)``,
    the sums now including these keys; the numerator is already divided by its denominator."""
    outs = []
    for start in range(0, fk.shape[2], chunk):
        cq, ck, cv = fq[:, :, :, start : start + chunk], fk[:, :, start : start + chunk], v[:, :, start : start + chunk]
        scores = torch.einsum("bkgir,bkjr->bkgij", cq, ck).tril()  # j <= i inside the chunk
        num = torch.einsum("bkgij,bkjd->bkgid", scores, cv) + torch.einsum("bkgir,bkrd->bkgid", cq, state)
        den = scores.sum(-1) + torch.einsum("bkgir,bkr->bkgi", cq, norm)
        outs.append(num / den.clamp_min(TINY)[..., None])
        state = state + torch.einsum("bkjr,bkjd->bkrd", ck, cv)
        norm = norm + ck.sum(2)
    return torch.cat(outs, dim=3), state, norm


def bidirectional(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Every query over every key: the sums once over all keys, ``(b, k, g, n, d)``."""
    state, norm = torch.einsum("bkmr,bkmd->bkrd", fk, v), fk.sum(2)
    return torch.einsum("bkgnr,bkrd->bkgnd", fq, state) / torch.einsum("bkgnr,bkr->bkgn", fq, norm).clamp_min(TINY)[..., None]


def quadratic_reference(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, *, causal: bool) -> torch.Tensor:
    """The same attention with every ``phi(q_i) . phi(k_j)`` materialised ``(b, k, g, n, m)``: the reference."""
    scores = torch.einsum("bkgnr,bkmr->bkgnm", fq, fk)
    if causal:
        scores = scores.tril(diagonal=fk.shape[2] - fq.shape[3])
    return torch.einsum("bkgnm,bkmd->bkgnd", scores, v) / scores.sum(-1).clamp_min(TINY)[..., None]


class FeatureState:
    """The decoding cache of one random-feature attention layer: its running sums, of constant size.

    Shapes: ``state (b, k, r, d)``, ``norm (b, k, r)``, float32.
    """

    def __init__(self) -> None:
        self.state: torch.Tensor | None = None
        self.norm: torch.Tensor | None = None
        self.seen = 0  # tokens summed so far

    def prepare(self, *, max_len: int | None, rollback: int) -> None:
        """Nothing to size (the sums do not grow with the tokens); refuse taking tokens back."""
        if self.seen:
            raise ValueError("prepare_cache needs an empty cache (call it right after model.new_cache())")
        if rollback:
            raise ConfigError(
                "model/attention", "performer",
                "sums its tokens into one state and cannot take them back, which speculative decoding (generate.draft) needs",
            )  # fmt: skip

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.state, self.norm) if t is not None)

    def truncate(self, n: int) -> None:
        if n != self.seen:
            raise ValueError(
                f"random-feature attention sums its {self.seen} tokens into one state and cannot take back "
                f"{self.seen - n}: no speculative decoding with model/attention=performer"
            )


class RandomFeatureAttention(nn.Module):
    """Softmax attention approximated by positive orthogonal random features (FAVOR+, arXiv:2009.14794).

    Args:
        dim: model width.
        n_heads: query heads.
        head_dim: width of one head.
        n_kv_heads: key/value heads (grouped as in GQA); ``None`` means ``n_heads``.
        n_features: random features ``r``; ``None``: ``head_dim * ln(head_dim)`` rounded up (Performer's
            choice). More features, a closer approximation (``tests/attention/test_random_features.py``).
        chunk: tokens per chunk of the causal computation (``c x c`` scores inside, running sums across).
        bias: biases on the projections.
        qkv_bias: biases on the query/key/value projections only; ``None`` follows ``bias``.
        dropout: unused: there are no attention weights to drop (the model's other dropouts still apply).
        scale: score scale; ``None`` means ``head_dim ** -0.5``.

    Shapes: ``(b, n, dim) -> (b, n, dim)``.
    """

    #: a prefix LM's bidirectional prefix would need the prefix's sums at every query: refused
    compatible_archs = ("causal", "encoder", "encdec")
    #: what its decoding cache holds (``zoo-info``'s "KV cache" column): running sums, not keys
    cache_summary = "constant state"

    def __init__(
        self,
        dim: int,
        *,
        n_heads: int,
        head_dim: int,
        n_kv_heads: int | None = None,
        n_features: int | None = None,
        chunk: int = 64,
        bias: bool = False,
        qkv_bias: bool | None = None,
        dropout: float = 0.0,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_kv_heads <= 0 or n_heads % n_kv_heads:
            allowed = [d for d in range(1, n_heads + 1) if n_heads % d == 0]
            raise ConfigError("model.attention.n_kv_heads", n_kv_heads, f"must divide model.n_heads={n_heads}: one of {allowed}")
        n_features = math.ceil(head_dim * math.log(max(head_dim, 2))) if n_features is None else n_features
        if n_features <= 0:
            raise ConfigError("model.attention.n_features", n_features, "a positive number of random features (or null)")
        if chunk <= 0:
            raise ConfigError("model.attention.chunk", chunk, "a positive number of tokens")
        qkv_bias = bias if qkv_bias is None else qkv_bias
        self.n_heads, self.n_kv_heads, self.head_dim, self.chunk = n_heads, n_kv_heads, head_dim, chunk
        self.scale = head_dim**-0.5 if scale is None else scale
        self.q_proj = nn.Linear(dim, n_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(n_heads * head_dim, dim, bias=bias)
        self.register_buffer("features", orthogonal_features(n_features, head_dim))

    @property
    def n_features(self) -> int:
        return self.features.shape[0]

    def score_projections(self) -> tuple[nn.Linear, nn.Linear]:
        """The projections that make the scores (queries, keys), apart from the values' path (DeepNorm's init)."""
        return self.q_proj, self.k_proj

    def new_cache(self) -> FeatureState:
        """The decoding cache this layer needs: running sums, not keys."""
        return FeatureState()

    def score_flops(self, n_queries: int, n_keys: int) -> float:
        """Forward FLOPs of the token mixing (the projections aside): features of every new query and key,
        the sums' updates and read-outs, and the ``c x c`` scores inside each chunk (the cached sums stand
        for the older keys)."""
        r, d, c = self.n_features, self.head_dim, min(self.chunk, n_queries)
        per_query = self.n_heads * (4 * r * d + 2 * c * (r + d))
        per_key = self.n_kv_heads * 4 * r * d
        return float(n_queries * (per_query + per_key))

    def cache_bytes(self, n: int) -> int:
        """Bytes of one sequence's decoding cache at any length: the float32 sums."""
        return 4 * self.n_kv_heads * self.n_features * (self.head_dim + 1)

    def forward(self, x: torch.Tensor, ctx, cache: FeatureState | None = None) -> torch.Tensor:
        q_pos = ctx.positions.expand(x.shape[0], -1)
        refuse(ctx.mask, has_bias=ctx.pos.bias(q_pos[:, :1], q_pos[:, :1]) is not None)
        q = rearrange(self.q_proj(x), "b n (h d) -> b n h d", d=self.head_dim)
        k = rearrange(self.k_proj(x), "b n (k d) -> b n k d", d=self.head_dim)
        v = rearrange(self.v_proj(x), "b n (k d) -> b k n d", d=self.head_dim).float()
        # the scale split between queries and keys, so that phi(q) . phi(k) estimates exp(q . k * scale)
        root = self.scale**0.5
        q = rearrange(ctx.pos.rotate(q, q_pos, ctx.rotation) * root, "b n (k g) d -> b k g n d", k=self.n_kv_heads)
        k = rearrange(ctx.pos.rotate(k, q_pos, ctx.rotation) * root, "b n k d -> b k n d")
        fq = positive_features(q, self.features, query=True)
        fk = positive_features(k, self.features, query=False)
        if ctx.mask.key_valid is not None:  # a padding key adds nothing to the sums
            fk = fk * ctx.mask.key_valid[:, None, -k.shape[2] :, None]
        if not ctx.mask.causal:
            out = bidirectional(fq, fk, v)
        else:
            b, r = x.shape[0], self.n_features
            if cache is None or cache.state is None:
                state, norm = v.new_zeros(b, self.n_kv_heads, r, self.head_dim), v.new_zeros(b, self.n_kv_heads, r)
            else:
                state, norm = cache.state, cache.norm
            out, state, norm = causal_chunks(fq, fk, v, state, norm, chunk=self.chunk)
            if cache is not None:
                cache.state, cache.norm, cache.seen = state, norm, cache.seen + x.shape[1]
        return self.o_proj(rearrange(out.to(x.dtype), "b k g n d -> b n (k g d)"))


def refuse(mask: Mask, *, has_bias: bool) -> None:
    """One line for what random features cannot express (before any heavy work)."""
    reasons = [
        (has_bias, "model/pos", "a score bias", "random-feature attention has no scores to add it to: use rope, learned, sinusoidal or none"),
        (mask.window is not None, "model.attention.window", mask.window, "random-feature attention sees every key: null"),
        (mask.prefix_len is not None, "model", "prefix", "random-feature attention has no bidirectional prefix: use causal, encoder or encdec"),
        (mask.q_segment is not None, "data.boundaries", "mask", "random-feature attention cannot mask packed documents"),
    ]
    for wrong, key, value, allowed in reasons:
        if wrong:
            raise ConfigError(key, value, allowed)
