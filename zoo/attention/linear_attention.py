"""Linear attention through a feature map: the structure that ``performer`` and ``based`` share.

Katharopoulos et al. 2020 (arXiv:2006.16236): when a score ``sim(q, k)`` is a dot product of
features, ``phi(q) . phi(k)``, attention becomes ``phi(q)^T S / phi(q)^T z`` with the running sums
``S = sum_j phi(k_j) v_j^T`` and ``z = sum_j phi(k_j)``: ``O(n r d)`` for ``r`` features instead of
``O(n^2 d)``. The options differ only in their feature map, a small module passed in
(:class:`~zoo.attention.random_features.RandomFeatures`, :class:`~zoo.attention.based.TaylorFeatures`).

Causal attention runs chunk by chunk: inside a chunk the ``c x c`` feature scores are masked like
softmax scores, across chunks the running sums ``S, z`` carry the past. Decoding keeps only those
sums (:class:`FeatureState`, constant size), so a cached step costs the same at any length.
:func:`quadratic_reference` is the obviously-correct form the chunked one is held to.

Packed documents (``data.boundaries=mask``) are honoured as the recurrent mixers honour them
(:func:`~zoo.attention.recurrence.document_resets`): a document is a run of equal segment ids and
starts from empty sums. Inside a chunk the scores are masked by document as well; the sums carried
into a chunk are read only by the queries of the document they hold, and the sums carried out of it
hold only its last document's keys. Bidirectionally, each document's keys are summed apart
(``O(n r d s)`` for ``s`` documents in a row).

What it cannot do, refused with one line: a score bias (ALiBi, T5: no scores to add it to), a
window or a prefix (``model=prefix``).

Letters: ``b`` batch, ``k`` KV heads, ``g`` query heads per KV head, ``n`` queries, ``m`` keys, ``d``
head dim, ``f`` query/key width fed to the feature map, ``r`` features, ``i``/``j`` queries/keys of one chunk,
``s`` documents of a packed row.
"""

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from zoo.attention.attention import kv_heads
from zoo.attention.mask import Mask
from zoo.attention.recurrence import document_resets
from zoo.errors import ConfigError

#: a denominator below this is a row that sees no key (pure padding): its output is zero
TINY = 1e-30


def document_runs(segments: torch.Tensor) -> torch.Tensor:
    """``(b, n)`` the document of each token of ``segments (b, n)``, counted from the row's first (0), a
    document being a run of equal ids; the first continues whatever sums came before the row."""
    return document_resets(segments).long().cumsum(dim=1)


def causal_chunks(
    fq: torch.Tensor,
    fk: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor,
    norm: torch.Tensor,
    *,
    chunk: int,
    runs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal linear attention of ``fq (b, k, g, n, r)`` over ``fk (b, k, n, r)``, ``v (b, k, n, d)`` after
    the running sums ``state (b, k, r, d)``, ``norm (b, k, r)``: ``(numerator (b, k, g, n, d), state, norm)``,
    the sums now including these keys; the numerator is already divided by its denominator.

    With ``runs (b, n)`` (:func:`document_runs`) a query sees only the keys of its own document: the sums
    given belong to document 0, and the sums returned hold only the last document's keys."""
    outs = []
    for start in range(0, fk.shape[2], chunk):
        cq, ck, cv = fq[:, :, :, start : start + chunk], fk[:, :, start : start + chunk], v[:, :, start : start + chunk]
        scores = torch.einsum("bkgir,bkjr->bkgij", cq, ck).tril()  # j <= i inside the chunk
        reader, writer, kept = cq, ck, None  # queries reading the sums carried in, keys added to those carried out
        if runs is not None:
            doc, carried = runs[:, start : start + chunk], runs[:, max(start - 1, 0), None]  # carried: the sums' document
            scores = scores * (doc[:, :, None] == doc[:, None, :])[:, None, None]
            reader = cq * (doc == carried)[:, None, None, :, None]
            writer = ck * (doc == doc[:, -1:])[:, None, :, None]
            kept = (doc[:, -1:] == carried)[:, :, None]  # (b, 1, 1): no document began in this chunk
        num = torch.einsum("bkgij,bkjd->bkgid", scores, cv) + torch.einsum("bkgir,bkrd->bkgid", reader, state)
        den = scores.sum(-1) + torch.einsum("bkgir,bkr->bkgi", reader, norm)
        outs.append(num / den.clamp_min(TINY)[..., None])
        if kept is not None:
            state, norm = state * kept[..., None], norm * kept
        state = state + torch.einsum("bkjr,bkjd->bkrd", writer, cv)
        norm = norm + writer.sum(2)
    return torch.cat(outs, dim=3), state, norm


def bidirectional(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, *, runs: torch.Tensor | None = None) -> torch.Tensor:
    """Every query over every key: the sums once over all keys, ``(b, k, g, n, d)``; with ``runs (b, n)``
    (:func:`document_runs`, queries and keys the same tokens) the sums of each document apart, read by its queries."""
    if runs is None:
        q_docs, k_docs = fq.new_ones(1, fq.shape[3], 1), fk.new_ones(1, fk.shape[2], 1)
    else:
        q_docs = k_docs = F.one_hot(runs).to(fk.dtype)  # (b, n, s)
    state, norm = torch.einsum("bms,bkmr,bkmd->bksrd", k_docs, fk, v), torch.einsum("bms,bkmr->bksr", k_docs, fk)
    num = torch.einsum("bns,bkgnr,bksrd->bkgnd", q_docs, fq, state)
    return num / torch.einsum("bns,bkgnr,bksr->bkgn", q_docs, fq, norm).clamp_min(TINY)[..., None]


def quadratic_reference(
    fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, *, causal: bool, segments: torch.Tensor | None = None
) -> torch.Tensor:
    """The same attention with every ``phi(q_i) . phi(k_j)`` materialised ``(b, k, g, n, m)``: the reference.
    The queries are the last ``n`` of the ``m`` keys' tokens; with ``segments (b, m)`` (the keys' document
    ids) a query sees only keys of its own document (:meth:`Mask.allows`)."""
    n, m = fq.shape[3], fk.shape[2]
    mask = Mask(causal=causal)
    if segments is not None:
        mask = Mask(causal=causal, q_segment=segments[:, m - n :], k_segment=segments)
    visible = mask.allows(torch.arange(m - n, m)[None], torch.arange(m)[None])  # (1 | b, n, m)
    scores = torch.einsum("bkgnr,bkmr->bkgnm", fq, fk) * visible[:, None, None]
    return torch.einsum("bkgnm,bkmd->bkgnd", scores, v) / scores.sum(-1).clamp_min(TINY)[..., None]


class FeatureState:
    """The decoding cache of one linear-attention layer: its running sums, of constant size.

    Args:
        owner: the layer's option name, for the refusals (``performer``, ``based``).

    Shapes: ``state (b, k, r, d)``, ``norm (b, k, r)``, float32.
    """

    def __init__(self, *, owner: str) -> None:
        self.owner = owner
        self.state: torch.Tensor | None = None
        self.norm: torch.Tensor | None = None
        self.seen = 0  # tokens summed so far

    def prepare(self, *, max_len: int | None, rollback: int) -> None:
        """Nothing to size (the sums do not grow with the tokens); refuse taking tokens back."""
        if self.seen:
            raise ValueError("prepare_cache needs an empty cache (call it right after model.new_cache())")
        if rollback:
            raise ConfigError(
                "model/attention", self.owner,
                "sums its tokens into one state and cannot take them back, which speculative decoding (generate.draft) needs",
            )  # fmt: skip

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.state, self.norm) if t is not None)

    def truncate(self, n: int) -> None:
        if n != self.seen:
            raise ValueError(
                f"linear attention sums its {self.seen} tokens into one state and cannot take back "
                f"{self.seen - n}: no speculative decoding with model/attention={self.owner}"
            )


class LinearAttention(nn.Module):
    """Causal or bidirectional attention whose scores are ``phi(q) . phi(k)`` for a feature map passed in
    (arXiv:2006.16236); what :class:`~zoo.attention.random_features.RandomFeatureAttention` and
    :class:`~zoo.attention.based.BasedAttention` build with their own maps.

    Args:
        dim: model width.
        option: the ``model/attention`` option it serves, named in refusals.
        feature_map: maps ``(queries (..., f), keys (..., f))`` to their features ``(..., r)``, float32;
            it declares ``n_features`` (``r``) and ``flops()`` (FLOPs of one vector's features).
        n_heads: query heads.
        head_dim: width of one head's value (and of its query and key, unless ``feature_dim`` says otherwise).
        feature_dim: width ``f`` of one head's query and key; ``None``: ``head_dim``.
        n_kv_heads: key/value heads (grouped as in GQA); ``None`` means ``n_heads``.
        chunk: tokens per chunk of the causal computation (``c x c`` scores inside, running sums across).
        bias: biases on the projections.
        qkv_bias: biases on the query/key/value projections only; ``None`` follows ``bias``.
        scale: score scale, split as ``sqrt(scale)`` on queries and on keys; ``None``: ``feature_dim ** -0.5``.

    Shapes: ``(b, n, dim) -> (b, n, dim)``.
    """

    #: a prefix LM's bidirectional prefix would need the prefix's sums at every query: refused
    compatible_archs = ("causal", "encoder", "encdec")
    #: what its decoding cache holds (``zoo-info``'s "KV cache" column): running sums, not keys
    cache_summary = "constant state"
    #: whether queries and keys take the stack's position scheme (its rotation: RoPE) before the feature map
    #: (``zoo-info --cost``'s pos column asks it)
    takes_positions = True

    def __init__(
        self,
        dim: int,
        *,
        option: str,
        feature_map: nn.Module,
        n_heads: int,
        head_dim: int,
        feature_dim: int | None = None,
        n_kv_heads: int | None = None,
        chunk: int = 64,
        bias: bool = False,
        qkv_bias: bool | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        n_kv_heads = kv_heads(n_heads, n_kv_heads)
        if chunk <= 0:
            raise ConfigError("model.attention.chunk", chunk, "a positive number of tokens")
        feature_dim = head_dim if feature_dim is None else feature_dim
        qkv_bias = bias if qkv_bias is None else qkv_bias
        self.option, self.feature_map = option, feature_map
        self.n_heads, self.n_kv_heads, self.head_dim, self.feature_dim, self.chunk = n_heads, n_kv_heads, head_dim, feature_dim, chunk
        self.scale = feature_dim**-0.5 if scale is None else scale
        self.q_proj = nn.Linear(dim, n_heads * feature_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, n_kv_heads * feature_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(n_heads * head_dim, dim, bias=bias)

    @property
    def n_features(self) -> int:
        return self.feature_map.n_features

    def score_projections(self) -> tuple[nn.Linear, nn.Linear]:
        """The projections that make the scores (queries, keys), apart from the values' path (DeepNorm's init)."""
        return self.q_proj, self.k_proj

    def new_cache(self) -> FeatureState:
        """The decoding cache this layer needs: running sums, not keys."""
        return FeatureState(owner=self.option)

    def score_flops(self, n_queries: int, n_keys: int) -> float:
        """Forward FLOPs of the token mixing (the projections aside): features of every new query and key,
        the sums' updates and read-outs, and the ``c x c`` scores inside each chunk (the cached sums stand
        for the older keys)."""
        r, d, c = self.n_features, self.head_dim, min(self.chunk, n_queries)
        features = self.feature_map.flops()
        per_query = self.n_heads * (features + 2 * r * d + 2 * c * (r + d))
        per_key = self.n_kv_heads * (features + 2 * r * d)
        return float(n_queries * (per_query + per_key))

    def cache_bytes(self, n: int) -> int:
        """Bytes of one sequence's decoding cache at any length: the float32 sums."""
        return 4 * self.n_kv_heads * self.n_features * (self.head_dim + 1)

    def forward(self, x: torch.Tensor, ctx, cache: FeatureState | None = None) -> torch.Tensor:
        q_pos = ctx.positions.expand(x.shape[0], -1)
        refuse(ctx.mask, has_bias=ctx.pos.bias(q_pos[:, :1], q_pos[:, :1]) is not None, option=self.option)
        q = rearrange(self.q_proj(x), "b n (h f) -> b n h f", f=self.feature_dim)
        k = rearrange(self.k_proj(x), "b n (k f) -> b n k f", f=self.feature_dim)
        v = rearrange(self.v_proj(x), "b n (k d) -> b k n d", d=self.head_dim).float()
        if self.takes_positions:
            q, k = ctx.pos.rotate(q, q_pos, ctx.rotation), ctx.pos.rotate(k, q_pos, ctx.rotation)
        # the scale split between queries and keys, so that phi(q) . phi(k) stands for sim(q . k * scale)
        root = self.scale**0.5
        q = rearrange(q * root, "b n (k g) f -> b k g n f", k=self.n_kv_heads)
        fq, fk = self.feature_map(q, rearrange(k * root, "b n k f -> b k n f"))
        if ctx.mask.key_valid is not None:  # a padding key adds nothing to the sums
            fk = fk * ctx.mask.key_valid[:, None, -k.shape[1] :, None]
        runs = None if ctx.mask.q_segment is None else document_runs(ctx.mask.q_segment.expand(x.shape[0], -1))
        if not ctx.mask.causal:
            out = bidirectional(fq, fk, v, runs=runs)
        else:
            b, r = x.shape[0], self.n_features
            if cache is None or cache.state is None:
                state, norm = v.new_zeros(b, self.n_kv_heads, r, self.head_dim), v.new_zeros(b, self.n_kv_heads, r)
            else:
                state, norm = cache.state, cache.norm
            out, state, norm = causal_chunks(fq, fk, v, state, norm, chunk=self.chunk, runs=runs)
            if cache is not None:
                cache.state, cache.norm, cache.seen = state, norm, cache.seen + x.shape[1]
        return self.o_proj(rearrange(out.to(x.dtype), "b k g n d -> b n (k g d)"))


def refuse(mask: Mask, *, has_bias: bool, option: str) -> None:
    """One line for what linear attention cannot express (before any heavy work)."""
    reasons = [
        (has_bias, "model/pos", "a score bias", f"{option} has no scores to add it to: use rope, learned, sinusoidal or none"),
        (mask.window is not None, "model.attention.window", mask.window, f"{option} sees every key: null"),
        (mask.prefix_len is not None, "model", "prefix", f"{option} has no bidirectional prefix: use causal, encoder or encdec"),
    ]
    for wrong, key, value, allowed in reasons:
        if wrong:
            raise ConfigError(key, value, allowed)
