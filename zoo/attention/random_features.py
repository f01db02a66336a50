"""Random-feature attention: a linear-cost approximation of softmax attention (``model/attention=performer``).

Performer's FAVOR+ (Choromanski et al. 2020, arXiv:2009.14794), in the family of random feature
attention (Peng et al. 2021, arXiv:2103.02143): ``exp(q . k)`` is the expectation of
``phi(q) . phi(k)`` over Gaussian ``w`` for the positive features
``phi(x) = exp(w x - |x|^2 / 2) / sqrt(r)``, so softmax attention becomes linear attention
(:mod:`zoo.attention.linear_attention`) with these features: ``O(n r d)`` instead of ``O(n^2 d)``.
The ``r`` rows of ``w`` are drawn orthogonal (in blocks of ``d``) with Gaussian lengths, which lowers
the estimator's variance; they are saved with the weights (a buffer), so a checkpoint reloads the
same attention.

Performer redraws ``w`` during training (``redraw_every``), so that no single draw's error is learnt
around. Each draw comes from its own generator, seeded from the layer's seed (drawn once from the
global generator when the layer is built, so the run's seed decides it; saved with the weights) and
the draw's number: a run and its resumption draw the same features at the same steps.

Letters: ``b`` batch, ``k`` KV heads, ``g`` query heads per KV head, ``n`` queries, ``m`` keys, ``d``
head dim, ``r`` random features.
"""

import math

import torch
from torch import nn

from zoo.attention.linear_attention import LinearAttention
from zoo.errors import ConfigError


def orthogonal_features(n_features: int, head_dim: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(r, d)`` Gaussian directions, orthogonal within each block of ``d`` rows, each row as long as a
    Gaussian vector's (FAVOR+'s orthogonal random features), from ``generator`` (``None``: the global one)."""
    blocks = []
    for _ in range(-(-n_features // head_dim)):
        square, _ = torch.linalg.qr(torch.randn(head_dim, head_dim, generator=generator))
        blocks.append(square.T)
    lengths = torch.randn(n_features, head_dim, generator=generator).norm(dim=1)
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


class RandomFeatures(nn.Module):
    """FAVOR+'s feature map: positive orthogonal random features, redrawn every ``redraw_every`` training forwards.

    Args:
        head_dim: width ``d`` of the queries and keys it maps.
        n_features: random features ``r``; ``None``: ``head_dim * ln(head_dim)`` rounded up (Performer's choice).
        redraw_every: training forwards per draw (forwards ``0..N-1`` use draw 0, ``N..2N-1`` draw 1, ...);
            ``None``: the draw made at build time, always. Evaluation and decoding never redraw.

    Buffers, all saved: ``features (r, d)`` (the current draw), ``seed`` and ``forwards`` (training
    forwards so far), so a reloaded state continues with the draws an uninterrupted run makes.

    Shapes: ``(queries (..., d), keys (..., d)) -> (phi(queries) (..., r), phi(keys) (..., r))``, float32.
    """

    def __init__(self, head_dim: int, *, n_features: int | None = None, redraw_every: int | None = None) -> None:
        super().__init__()
        n_features = math.ceil(head_dim * math.log(max(head_dim, 2))) if n_features is None else n_features
        if n_features <= 0:
            raise ConfigError("model.attention.n_features", n_features, "a positive number of random features (or null)")
        if redraw_every is not None and redraw_every <= 0:
            raise ConfigError("model.attention.redraw_every", redraw_every, "a positive number of training forwards, or null (never redraw)")
        self.head_dim, self.redraw_every = head_dim, redraw_every
        self.register_buffer("seed", torch.randint(0, 2**62, ()))
        self.register_buffer("forwards", torch.zeros((), dtype=torch.long))
        # a model probed on the meta device has no seed to draw from, and needs only the shape
        self.register_buffer("features", torch.empty(n_features, head_dim) if self.seed.is_meta else self.draw(0, n_features=n_features))

    @property
    def n_features(self) -> int:
        return self.features.shape[0]

    @property
    def recompute_refusal(self) -> str | None:
        """Why recomputing this module in the backward pass (``trainer.activation_checkpointing``) would
        not repeat its forward, or ``None``: a recomputation would count the forward again and could redraw."""
        if self.redraw_every is None:
            return None
        return f"false with model.attention.redraw_every={self.redraw_every}: a recomputed forward would count again and could redraw the features"

    def draw(self, number: int, *, n_features: int | None = None) -> torch.Tensor:
        """Draw ``number`` of this layer: the same features for the same seed and number, on any device."""
        generator = torch.Generator().manual_seed(int(self.seed) + number)
        features = orthogonal_features(n_features or self.n_features, self.head_dim, generator=generator)
        return features.to(self.seed.device)

    def flops(self) -> float:
        """Forward FLOPs of one vector's features: its projection on the ``r`` directions."""
        return 2.0 * self.n_features * self.head_dim

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and self.redraw_every is not None:
            done = int(self.forwards)
            if done and done % self.redraw_every == 0:
                # a new tensor, not written in place: a backward still pending may hold the old draw
                self.features = self.draw(done // self.redraw_every).to(self.features.dtype)
            self.forwards += 1
        return positive_features(q, self.features, query=True), positive_features(k, self.features, query=False)


class RandomFeatureAttention(LinearAttention):
    """Softmax attention approximated by positive orthogonal random features (FAVOR+, arXiv:2009.14794).

    Args:
        dim: model width.
        n_heads: query heads.
        head_dim: width of one head.
        n_kv_heads: key/value heads (grouped as in GQA); ``None`` means ``n_heads``.
        n_features: random features ``r``; ``None``: ``head_dim * ln(head_dim)`` rounded up (Performer's
            choice). More features, a closer approximation (``tests/attention/test_random_features.py``).
        redraw_every: training forwards per draw of the features; ``None``: never redraw (:class:`RandomFeatures`).
        chunk: tokens per chunk of the causal computation (``c x c`` scores inside, running sums across).
        bias: biases on the projections.
        qkv_bias: biases on the query/key/value projections only; ``None`` follows ``bias``.
        dropout: unused: there are no attention weights to drop (the model's other dropouts still apply).
        scale: score scale; ``None`` means ``head_dim ** -0.5``.

    Shapes: ``(b, n, dim) -> (b, n, dim)``.
    """

    def __init__(
        self,
        dim: int,
        *,
        n_heads: int,
        head_dim: int,
        n_kv_heads: int | None = None,
        n_features: int | None = None,
        redraw_every: int | None = None,
        chunk: int = 64,
        bias: bool = False,
        qkv_bias: bool | None = None,
        dropout: float = 0.0,
        scale: float | None = None,
    ) -> None:
        feature_map = RandomFeatures(head_dim, n_features=n_features, redraw_every=redraw_every)
        super().__init__(
            dim, option="performer", feature_map=feature_map, n_heads=n_heads, head_dim=head_dim, n_kv_heads=n_kv_heads,
            chunk=chunk, bias=bias, qkv_bias=qkv_bias, scale=scale,
        )  # fmt: skip
