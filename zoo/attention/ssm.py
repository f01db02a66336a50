"""A selective state-space mixer (``model/attention=mamba2``), Mamba-2 style, in plain PyTorch.

Mamba (Gu & Dao 2023, arXiv:2312.00752) makes a state space model *selective*: its step ``dt``, input
matrix ``B`` and output matrix ``C`` are computed from each token, so the state keeps or forgets by
content. Mamba-2 (Dao & Gu 2024, arXiv:2405.21060) restricts the diagonal ``A`` to one value per
head, which turns the scan into the decayed linear attention of :mod:`zoo.attention.recurrence`
(state-space duality: ``q = C``, ``k = B``, ``v = dt x``, decay ``exp(dt A)``), trained in chunks of
matmuls and decoded one token at a time. Around it, as in Mamba-2: a short causal depthwise
convolution over ``x``, ``B`` and ``C``, a skip ``D x``, and an output gated by ``silu(z)`` and
RMS-normalised.

Letters: ``b`` batch, ``n`` tokens, ``h`` heads, ``p`` channels of one head, ``s`` state size,
``c`` convolved channels, ``w`` convolution width.
"""

import math

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from zoo.attention.attention import Context
from zoo.attention.mixer import check_form, read_context, run_form
from zoo.attention.recurrence import flops_per_token
from zoo.attention.state_cache import StateCache
from zoo.dropout import dropout_layer
from zoo.errors import ConfigError
from zoo.norm import RMSNorm


def causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, tail: torch.Tensor, resets: torch.Tensor | None) -> torch.Tensor:
    """Depthwise causal convolution of ``x (b, n, c)`` by ``weight (c, w)`` after ``tail (b, w-1, c)``,
    the inputs before ``x`` (zeros at the start of a text); a tap that reaches back across a document
    start (``resets (b, n)``) reads nothing."""
    n, width = x.shape[1], weight.shape[1]
    inputs = torch.cat([tail, x], dim=1)
    run = None if resets is None else resets.long().cumsum(dim=1)
    if run is not None:
        run_before = torch.cat([run.new_zeros(run.shape[0], width - 1), run], dim=1)
    out = bias
    # a few shifted products rather than unfold: unfold's backward cost more than the whole scan
    for tap in range(width):  # tap w-1 is the token itself, tap 0 the one w-1 tokens back
        term = inputs[:, tap : tap + n] * weight[:, tap]
        if run is not None:
            term = term * (run_before[:, tap : tap + n] == run)[..., None]
        out = out + term
    return out


class SelectiveSSM(nn.Module):
    """Mamba-2's selective state-space block (arXiv:2405.21060, section 7) as a token mixer.

    Args:
        dim: model width.
        n_heads: heads, each with its own ``A`` and ``dt``.
        head_dim: the stack's head width; each SSM head carries ``expand * head_dim`` channels.
        state_dim: size ``s`` of the state per channel (``B`` and ``C``, shared by the heads).
        expand: inner width over ``n_heads * head_dim`` (Mamba: 2).
        conv_width: taps of the causal depthwise convolution (Mamba: 4).
        form: ``auto`` (chunks to train and prefill, the recurrence to decode), ``chunked``,
            ``parallel`` (quadratic) or ``scan`` (the sequential reference throughout).
        chunk: tokens per chunk of the chunked form.
        dt_min, dt_max: the initial steps ``dt`` are log-uniform between them (Mamba's init).
        bias: biases on the projections.
        dropout: on the gated output, before the output projection.
        eps: of the gated RMSNorm.

    Shapes: ``(b, n, dim) -> (b, n, dim)``; its cache (:class:`StateCache`) holds a ``(b, h, s, p)``
    state and the convolution's last ``conv_width - 1`` inputs ``(b, w-1, c)``.
    """

    #: reads left to right: a bidirectional stack cannot use it (:func:`zoo.arch.stack.refuse_bidirectional`)
    requires_causal = True
    #: the architectures it serves (``zoo-info``'s compatibility matrix)
    compatible_archs = ("causal",)
    #: what its decoding cache holds (``zoo-info``'s "KV cache" column)
    cache_summary = "constant state"
    #: the stack's position scheme reaches nothing here (``zoo-info --cost``'s pos column): the
    #: convolution and the recurrence carry the order
    takes_positions = False
    option = "mamba2"

    def __init__(
        self,
        dim: int,
        *,
        n_heads: int,
        head_dim: int,
        state_dim: int = 16,
        expand: int = 2,
        conv_width: int = 4,
        form: str = "auto",
        chunk: int = 64,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        bias: bool = False,
        dropout: float = 0.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        for key, value in [("state_dim", state_dim), ("expand", expand), ("conv_width", conv_width)]:
            if value <= 0:
                raise ConfigError(f"model.attention.{key}", value, "a positive integer")
        if not 0 < dt_min <= dt_max:
            raise ConfigError("model.attention.dt_min", dt_min, f"positive and at most model.attention.dt_max={dt_max}")
        check_form(form, chunk)
        self.n_heads, self.state_dim, self.conv_width, self.form, self.chunk = n_heads, state_dim, conv_width, form, chunk
        self.head_width = expand * head_dim
        inner = n_heads * self.head_width
        self.gate_proj = nn.Linear(dim, inner, bias=bias)  # z
        self.x_proj = nn.Linear(dim, inner, bias=bias)
        self.b_proj = nn.Linear(dim, state_dim, bias=bias)
        self.c_proj = nn.Linear(dim, state_dim, bias=bias)
        self.dt_proj = nn.Linear(dim, n_heads, bias=False)
        channels = inner + 2 * state_dim
        # PyTorch's Conv1d init, by hand: the weight is a plain parameter the model's init leaves alone
        bound = 1 / math.sqrt(conv_width)
        self.conv_weight = nn.Parameter(torch.empty(channels, conv_width).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.empty(channels).uniform_(-bound, bound))
        # dt = softplus(dt_proj x + dt_bias) starts log-uniform in [dt_min, dt_max]: the bias is its inverse softplus
        dt = torch.exp(torch.empty(n_heads).uniform_(math.log(dt_min), math.log(dt_max)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.a_log = nn.Parameter(torch.log(torch.empty(n_heads).uniform_(1.0, 16.0)))  # A = -exp(a_log), Mamba-2's range
        self.skip = nn.Parameter(torch.ones(n_heads))  # D
        self.norm = RMSNorm(inner, eps=eps)
        self.dropout = dropout_layer(dropout)
        self.o_proj = nn.Linear(inner, dim, bias=bias)

    def score_projections(self) -> tuple[nn.Linear, nn.Linear]:
        """The projections that play queries and keys (``C``, ``B``), apart from the values' path (DeepNorm's init)."""
        return self.c_proj, self.b_proj

    def new_cache(self) -> StateCache:
        return StateCache(owner=self.option)

    def score_flops(self, n_queries: int, n_keys: int) -> float:
        """Forward FLOPs of the recurrence in chunks (:func:`~zoo.attention.recurrence.flops_per_token`)
        and of the convolution, over the new tokens (the cached state stands for the others)."""
        chunk = min(self.chunk, n_queries)
        scan = flops_per_token(n_heads=self.n_heads, key_dim=self.state_dim, value_dim=self.head_width, chunk=chunk)
        return n_queries * (scan + 2.0 * self.conv_weight.numel())

    def cache_bytes(self, n: int) -> int:
        """Bytes of one sequence's state, whatever ``n``: the SSM state and the convolution's tail."""
        entries = self.n_heads * self.state_dim * self.head_width + (self.conv_width - 1) * self.conv_weight.shape[0]
        return entries * self.o_proj.weight.element_size()

    def forward(self, x: torch.Tensor, ctx: Context, cache: StateCache | None = None) -> torch.Tensor:
        valid, resets = read_context(ctx, self.option)
        b, n, _ = x.shape
        xbc = torch.cat([self.x_proj(x), self.b_proj(x), self.c_proj(x)], dim=-1)
        dt = F.softplus(self.dt_proj(x) + self.dt_bias)  # (b, n, h)
        if valid is not None:
            # a padding token is skipped: dt = 0 leaves the state as it was, and its convolution input
            # is zero, as before the first token (prompts are left-padded)
            xbc = xbc * valid[..., None]
            dt = dt * valid[..., None]
        tail = None if cache is None else cache.get("conv")
        if tail is None:
            tail = xbc.new_zeros(b, self.conv_width - 1, xbc.shape[-1])
        xs, b_in, c_in = F.silu(causal_conv(xbc, self.conv_weight, self.conv_bias, tail=tail, resets=resets)).split(
            [self.n_heads * self.head_width, self.state_dim, self.state_dim], dim=-1
        )
        xs = rearrange(xs, "b n (h p) -> b h n p", h=self.n_heads)
        log_decay = rearrange(dt * -self.a_log.exp(), "b n h -> b h n")
        q = rearrange(c_in, "b n s -> b 1 n s").expand(-1, self.n_heads, -1, -1)
        k = rearrange(b_in, "b n s -> b 1 n s").expand(-1, self.n_heads, -1, -1)
        state = None if cache is None else cache.get("state")
        y, state = run_form(self.form, self.chunk, q, k, xs * rearrange(dt, "b n h -> b h n 1"), log_decay, state=state, resets=resets)
        if cache is not None:
            cache.put("state", state)
            cache.put("conv", torch.cat([tail, xbc], dim=1)[:, n:])  # the last conv_width - 1 inputs
            cache.advance(n)
        y = rearrange(y + self.skip[:, None, None] * xs, "b h n p -> b n (h p)")
        return self.o_proj(self.dropout(self.norm(y * F.silu(self.gate_proj(x)))))
