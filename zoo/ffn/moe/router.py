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
    #: the architectures it may serve (``zoo-info``'s compatibility matrix reads it)
    compatible_archs: tuple[str, ...] = ("causal", "prefix", "encoder", "encdec")

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

    def forward(self, x: torch.Tensor, *, seq_len: int | None = None) -> Routing:
        """Route ``x (t, dim)``: ``t = b * seq_len`` tokens, sequence by sequence (``None``: one sequence)."""
        raise NotImplementedError

    def causal_refusal(self) -> ConfigError | None:
        """Why a causal stack (a decoder) must not hold this router, or ``None`` when it may.

        The architecture asks every module of a causal stack before any training
        (:func:`zoo.arch.stack.refuse_future`).
        """
        return None


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
    of whose choices drop gets a zero output and passes through the residual unchanged).
    Assignments are kept in order of the token's position in its sequence, then its sequence, then
    its choice: a token is never dropped for a later one, so routing stays causal (GShard ranks
    every first choice above any second one, which would let a later token drop an earlier token's
    second choice). Dropping still depends on the batch (the other sequences, the number of tokens),
    so decoding with a KV cache routes differently from the full forward; ``None`` is dropless.

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

    def choose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(probs (t, e), weight (t, k), expert (t, k))``: the distribution the balancing loss reads,
        and each token's experts with their gate values."""
        probs = logits.softmax(dim=-1)
        weight, expert = probs.topk(self.top_k, dim=-1)
        if self.renormalize:
            weight = weight / weight.sum(dim=-1, keepdim=True)
        return probs, weight, expert

    def forward(self, x: torch.Tensor, *, seq_len: int | None = None) -> Routing:
        t, k, e = x.shape[0], self.top_k, self.n_experts
        logits = self.logits(x)
        probs, weight, expert = self.choose(logits)
        # choice-major layout (all first choices, then all second ones): assignment j * t + i
        expert, weight = expert.t().reshape(-1), weight.t().reshape(-1)
        order = expert.argsort(stable=True)
        counts = torch.bincount(expert, minlength=e)
        load = counts.float() / (t * k)
        capacity = self.capacity(t)
        dropped = torch.zeros((), device=x.device)
        if capacity is not None:
            order = priority(t, k, seq_len or t, device=x.device)
            order = order[expert[order].argsort(stable=True)]  # by expert, priority order within each
            # rank of each assignment within its expert, in priority order
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


class GroupedSigmoidRouter(TopKRouter):
    """Token choice by sigmoid affinities, limited to a few groups of experts, balanced by a bias
    rather than a loss (DeepSeek-V3, arXiv:2412.19437, section 2.1.2).

    Each expert's affinity is ``sigmoid(logit)``. Experts fall into ``n_groups`` equal groups; a group
    scores the sum of its two highest affinities, a token keeps its ``top_k_groups`` best groups and
    picks its ``top_k`` experts among them. A per-expert ``score_bias`` is added to the affinities for
    that choice only; the gate values are the chosen affinities, divided by their sum with
    ``renormalize``, times ``scale``. In training the bias moves by ``bias_update_rate`` towards the
    experts the batch underloaded (DeepSeek-V3's auxiliary-loss-free balancing, its gamma).

    Args:
        dim, n_experts, jitter, capacity_factor: as in :class:`TopKRouter`.
        top_k: experts per token.
        renormalize: divide the chosen affinities by their sum (``norm_topk_prob``).
        n_groups: groups of experts (``n_group``); 1: no group limit.
        top_k_groups: groups a token may choose from (``topk_group``).
        scale: multiplies the gate values (``routed_scaling_factor``).
        bias_update_rate: per-step change of ``score_bias`` in training; 0: the bias stays.

    Shapes: ``(t, dim)`` -> :class:`Routing` with ``a = t * top_k`` assignments.
    """

    def __init__(
        self,
        dim: int,
        *,
        n_experts: int,
        top_k: int = 2,
        renormalize: bool = True,
        n_groups: int = 1,
        top_k_groups: int = 1,
        scale: float = 1.0,
        bias_update_rate: float = 0.0,
        capacity_factor: float | None = None,
        jitter: float = 0.0,
    ) -> None:
        super().__init__(dim, n_experts=n_experts, top_k=top_k, renormalize=renormalize, capacity_factor=capacity_factor, jitter=jitter)
        if n_groups < 1 or n_experts % n_groups:
            allowed = [g for g in range(1, n_experts + 1) if n_experts % g == 0]
            raise ConfigError("model.ffn.router.n_groups", n_groups, f"must divide model.ffn.n_experts={n_experts}: one of {allowed}")
        if not 1 <= top_k_groups <= n_groups or top_k > top_k_groups * (n_experts // n_groups):
            raise ConfigError(
                "model.ffn.router.top_k_groups", top_k_groups,
                f"in [1, n_groups={n_groups}], with enough experts for top_k={top_k}",
            )  # fmt: skip
        if bias_update_rate < 0:
            raise ConfigError("model.ffn.router.bias_update_rate", bias_update_rate, "must be >= 0 (0: a fixed bias)")
        self.n_groups, self.top_k_groups, self.scale, self.bias_update_rate = n_groups, top_k_groups, scale, bias_update_rate
        # a buffer, not a parameter: set by the balancing rule (or a checkpoint), never by gradients
        self.register_buffer("score_bias", torch.zeros(n_experts))

    def choose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        affinity = logits.sigmoid()
        biased = affinity + self.score_bias.float()
        if self.n_groups > 1:
            groups = biased.view(-1, self.n_groups, self.n_experts // self.n_groups)
            group_score = groups.topk(min(2, groups.shape[-1]), dim=-1).values.sum(-1)
            kept = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, group_score.topk(self.top_k_groups, dim=-1).indices, True)
            biased = groups.masked_fill(~kept[..., None], float("-inf")).flatten(1)
        expert = biased.topk(self.top_k, dim=-1).indices
        weight = affinity.gather(1, expert)
        if self.renormalize:
            weight = weight / (weight.sum(dim=-1, keepdim=True) + 1e-20)
        # the balancing loss reads normalised affinities (DeepSeek-V3's sequence-wise loss, eq. 19)
        return affinity / affinity.sum(dim=-1, keepdim=True), weight * self.scale, expert

    def forward(self, x: torch.Tensor, *, seq_len: int | None = None) -> Routing:
        routing = super().forward(x, seq_len=seq_len)
        if self.training and self.bias_update_rate > 0:
            with torch.no_grad():
                self.score_bias += self.bias_update_rate * torch.sign(routing.load.mean() - routing.load)
        return routing


class ExpertChoiceRouter(Router):
    """Expert choice: each expert picks the ``c = ceil(capacity_factor * t / e)`` tokens that score it highest.

    Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing", arXiv:2202.09368. Every
    expert is exactly full, so no balancing loss is needed; a token may be picked by several
    experts or by none (``Routing.dropped`` is the fraction picked by none). The gate is the
    softmax over experts of the token's logits, as in the paper.

    Not causal: which tokens an expert takes depends on every token of the batch, future ones
    included (changing one token moves earlier tokens' outputs), so a causal stack refuses it
    before training (:meth:`causal_refusal`): it serves encoders (``model=encoder``).

    Args:
        dim, n_experts, jitter: as in :class:`Router`.
        capacity_factor: experts per token on average (2 in the paper).

    Shapes: ``(t, dim)`` -> :class:`Routing` with ``a = e * c`` assignments.
    """

    needs_balancing = False
    compatible_archs = ("encoder",)

    def __init__(self, dim: int, *, n_experts: int, capacity_factor: float = 2.0, jitter: float = 0.0) -> None:
        super().__init__(dim, n_experts=n_experts, jitter=jitter)
        if capacity_factor <= 0:
            raise ConfigError("model.ffn.router.capacity_factor", capacity_factor, "must be > 0")
        self.capacity_factor = capacity_factor

    @property
    def experts_per_token(self) -> float:
        return float(self.capacity_factor)

    def causal_refusal(self) -> ConfigError:
        return ConfigError(
            "model/ffn/router",
            "expert_choice",
            "each expert picks its tokens among the whole batch, later tokens included, so a decoder (model=causal, "
            "prefix, encdec) would learn from the future: use it with model=encoder, or model/ffn/router=top_k",
        )

    def forward(self, x: torch.Tensor, *, seq_len: int | None = None) -> Routing:
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


def priority(t: int, k: int, seq_len: int, *, device: torch.device) -> torch.Tensor:
    """``(t * k,)`` the choice-major assignments (``j * t + i``: choice ``j`` of token ``i``, tokens
    sequence by sequence) in capacity priority: by position in the sequence, then sequence, then choice.
    So an assignment competes only with those of earlier positions (any sequence) and of its own position.
    """
    assignment = torch.arange(t * k, device=device)
    token, choice = assignment % t, assignment // t
    position, sequence = token % seq_len, token // seq_len
    return ((position * (t // seq_len) + sequence) * k + choice).argsort()
