"""Routers of the mixture-of-experts FFN: which expert processes which token, with what weight.

A router turns tokens ``(t, dim)`` into a :class:`Routing`: a flat list of (token, expert, weight)
assignments grouped by expert, so the experts run on contiguous slices and no Python loop touches
tokens. Router logits are computed in float32 whatever the autocast dtype (small logit errors flip
the top-k choice).

Letters: ``t`` tokens (batch and sequence flattened), ``e`` experts, ``k`` experts per token,
``a`` assignments (token-expert pairs), ``c`` tokens per expert.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError


@dataclass
class Routing:
    """The assignments of one forward pass, grouped by expert (expert 0's first).

    The first ``sum(counts)`` assignments run; any after them were dropped (capacity) and add nothing.

    Args:
        token: ``(a,)`` index of the token (row of the flattened input) of each assignment.
        expert: ``(a,)`` expert of each assignment.
        weight: ``(a,)`` float32 gate value the expert's output is multiplied by.
        counts: assignments each expert runs, ``len == e``: the slice sizes of ``token``.
        logits: ``(t, e)`` float32 router logits (for the z-loss).
        probs: ``(t, e)`` float32 softmax of the logits over experts (for the balancing loss).
        load: ``(e,)`` fraction of the assignments each expert was chosen for, before capacity drops.
        dropped: ``()`` fraction of assignments dropped by capacity (token choice), or of tokens no
            expert picked (expert choice).
        inverse: ``(k * t,)`` for token choice, where every token has ``k`` assignments: the position
            in ``token`` of choice ``j`` of token ``i`` at ``j * t + i``. It lets dispatch and combine
            move rows by gathers alone (:mod:`zoo.ffn.moe.dispatch`). ``None`` for expert choice.
    """

    token: torch.Tensor
    expert: torch.Tensor
    weight: torch.Tensor
    counts: list[int]
    logits: torch.Tensor
    probs: torch.Tensor
    load: torch.Tensor
    dropped: torch.Tensor
    inverse: torch.Tensor | None = None


class Router(nn.Module):
    """Base of the routers: a float32 linear map from a token to one logit per expert.

    Its projection makes scores, not values (:meth:`score_projections`): DeepNorm's re-init gives it
    gain 1 rather than the value path's ``beta``.

    Args:
        dim: model width.
        n_experts: experts to route to.
        jitter: in training, multiply the router's input by ``U(1 - jitter, 1 + jitter)``
            (Switch Transformer's exploration noise, 0.01 there).
    """

    #: whether the load-balancing loss applies (expert choice is balanced by construction)
    needs_balancing: bool = True

    def __init__(self, dim: int, *, n_experts: int, jitter: float = 0.0) -> None:
        super().__init__()
        if n_experts < 1:
            raise ConfigError("model.ffn.n_experts", n_experts, "must be >= 1")
        if not 0.0 <= jitter < 1.0:
            raise ConfigError("model.ffn.router.jitter", jitter, "must be in [0, 1)")
        self.n_experts, self.jitter = n_experts, jitter
        self.proj = nn.Linear(dim, n_experts, bias=False)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(t, dim) -> (t, e)`` float32 logits."""
        x = x.float()
        if self.training and self.jitter > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.linear(x, self.proj.weight.float())

    @property
    def experts_per_token(self) -> float:
        """Experts one token passes through on average (for active-parameter counts)."""
        raise NotImplementedError

    def score_projections(self) -> tuple[nn.Linear]:
        """The projection that makes the routing logits (scores, not values)."""
        return (self.proj,)

    def forward(self, x: torch.Tensor) -> Routing:
        raise NotImplementedError


class TopKRouter(Router):
    """Token choice: each token goes to its ``top_k`` most probable experts.

    Top-1 is the Switch Transformer (Fedus et al. 2021, arXiv:2101.03961); top-2 is GShard
    (Lepikhin et al. 2020, arXiv:2006.16668) and Mixtral (Jiang et al. 2024, arXiv:2401.04088).
    The gate values are the softmax over all experts at the chosen ones; ``renormalize`` rescales
    them to sum to one, which is Mixtral's softmax over the top-k logits. With ``top_k=1`` and
    ``renormalize`` the gate is always 1 and only the auxiliary losses train the router: Switch
    keeps ``renormalize=False``.

    With a ``capacity_factor`` each expert takes at most ``ceil(factor * t * top_k / e)``
    assignments; the rest are dropped, so their tokens get nothing from that expert (a token all
    of whose choices drop gets a zero output and passes through the residual unchanged). Every
    token's first choice outranks any second choice, then earlier tokens outrank later ones
    (GShard). Dropping depends on the other tokens of the batch, future ones included: a
    capacity breaks causality and cached decoding equality; ``None`` is dropless.

    Args:
        dim, n_experts, jitter: as in :class:`Router`.
        top_k: experts per token.
        renormalize: rescale the top-k gate values to sum to one.
        capacity_factor: ``None`` (dropless) or > 0.

    Shapes: ``(t, dim)`` -> :class:`Routing` with ``a = t * top_k`` assignments, dropped ones last.
    """

    def __init__(
        self,
        dim: int,
        *,
        n_experts: int,
        top_k: int = 2,
        renormalize: bool = True,
        capacity_factor: float | None = None,
        jitter: float = 0.0,
    ) -> None:
        super().__init__(dim, n_experts=n_experts, jitter=jitter)
        if not 1 <= top_k <= n_experts:
            raise ConfigError("model.ffn.router.top_k", top_k, f"must be in [1, model.ffn.n_experts={n_experts}]")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ConfigError("model.ffn.router.capacity_factor", capacity_factor, "must be > 0, or null for dropless")
        self.top_k, self.renormalize, self.capacity_factor = top_k, renormalize, capacity_factor

    @property
    def experts_per_token(self) -> float:
        return float(self.top_k)

    def capacity(self, n_tokens: int) -> int | None:
        """Assignments one expert takes at most, for ``n_tokens`` tokens."""
        if self.capacity_factor is None:
            return None
        return math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts)

    def forward(self, x: torch.Tensor) -> Routing:
        t, k, e = x.shape[0], self.top_k, self.n_experts
        logits = self.logits(x)
        probs = logits.softmax(dim=-1)
        weight, expert = probs.topk(k, dim=-1)
        if self.renormalize:
            weight = weight / weight.sum(dim=-1, keepdim=True)
        # choice-major order (all first choices, then all second ones): the priority for capacity
        expert, weight = expert.t().reshape(-1), weight.t().reshape(-1)
        order = expert.argsort(stable=True)
        counts = torch.bincount(expert, minlength=e)
        load = counts.float() / (t * k)
        capacity = self.capacity(t)
        dropped = torch.zeros((), device=x.device)
        if capacity is not None:
            # rank of each assignment within its expert, in priority order (the sort is stable)
            starts = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
            keep = torch.arange(t * k, device=x.device) - starts < capacity
            order = torch.cat([order[keep], order[~keep]])
            counts = counts.clamp(max=capacity)
            dropped = 1.0 - keep.float().mean()
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(t * k, device=x.device))
        return Routing(
            token=order % t,
            expert=expert[order],
            weight=weight[order],
            counts=counts.tolist(),
            logits=logits,
            probs=probs,
            load=load,
            dropped=dropped,
            inverse=inverse,
        )


class ExpertChoiceRouter(Router):
    """Expert choice: each expert picks the ``c = ceil(capacity_factor * t / e)`` tokens that score it highest.

    Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing", arXiv:2202.09368. Every
    expert is exactly full, so no balancing loss is needed; a token may be picked by several
    experts or by none (``Routing.dropped`` is the fraction picked by none). The gate is the
    softmax over experts of the token's logits, as in the paper.

    Not causal: which tokens an expert takes depends on every token of the batch, future ones
    included, so a causal LM trained with it sees the future through the routing, and decoding one
    token at a time routes differently from the full forward. Use it for encoders, or as the
    paper's upper bound.

    Args:
        dim, n_experts, jitter: as in :class:`Router`.
        capacity_factor: experts per token on average (2 in the paper).

    Shapes: ``(t, dim)`` -> :class:`Routing` with ``a = e * c`` assignments.
    """

    needs_balancing = False

    def __init__(self, dim: int, *, n_experts: int, capacity_factor: float = 2.0, jitter: float = 0.0) -> None:
        super().__init__(dim, n_experts=n_experts, jitter=jitter)
        if capacity_factor <= 0:
            raise ConfigError("model.ffn.router.capacity_factor", capacity_factor, "must be > 0")
        self.capacity_factor = capacity_factor

    @property
    def experts_per_token(self) -> float:
        return float(self.capacity_factor)

    def forward(self, x: torch.Tensor) -> Routing:
        t, e = x.shape[0], self.n_experts
        logits = self.logits(x)
        probs = logits.softmax(dim=-1)
        c = min(t, math.ceil(self.capacity_factor * t / e))
        weight, token = probs.t().topk(c, dim=-1)  # (e, c)
        token = token.reshape(-1)
        picked = torch.zeros(t, device=x.device).index_fill_(0, token, 1.0)
        return Routing(
            token=token,
            expert=torch.arange(e, device=x.device).repeat_interleave(c),
            weight=weight.reshape(-1),
            counts=[c] * e,
            logits=logits,
            probs=probs,
            load=torch.full((e,), 1.0 / e, device=x.device),
            dropped=1.0 - picked.mean(),
        )
