"""The mixture-of-experts FFN (option ``moe`` of the ``model/ffn`` slot).

Letters: ``b`` batch, ``n`` sequence, ``t = b * n`` tokens, ``e`` experts, ``a`` assignments.
"""

from collections.abc import Callable

import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.ffn.moe.dispatch import collect, dispatch, padded_positions
from zoo.ffn.moe.grouped import batched_forward, can_group, grouped_forward
from zoo.ffn.moe.losses import load_balancing_loss, router_z_loss
from zoo.ffn.moe.router import Router, Routing

#: pad every expert to the busiest one's tokens (one batched matmul) while that adds at most 25% rows
PADDING_LIMIT = 1.25


def n_params(module: nn.Module) -> int:
    # the model's whole count lives in zoo.arch.cost; this is one module's own sum
    return sum(p.numel() for p in module.parameters())


class MoE(nn.Module):
    """A sparsely-gated mixture of expert FFNs (Shazeer et al. 2017, arXiv:1701.06538).

    The router assigns tokens to experts (:mod:`zoo.ffn.moe.router`); the tokens of each expert
    are gathered into one contiguous block, every expert runs once on its block (all of them in
    one batched or grouped matmul for the GLU and MLP families, :mod:`zoo.ffn.moe.grouped`), and
    the outputs, scaled by their gate values, are added back to their tokens. A token an expert does not take gets nothing
    from it: a token dropped by every expert gets a zero output. Shared experts
    (DeepSeekMoE, Dai et al. 2024, arXiv:2401.06066) see every token and add to the routed output.

    After each forward the module keeps, for the training loop:

    - ``losses``: ``{"load_balance": coef * e * sum f_i P_i, "z_loss": coef * mean lse^2}``
      (:mod:`zoo.ffn.moe.losses`; each only when its coefficient is > 0, the balancing loss only
      for routers that need it); the architecture's ``aux_loss()`` sums them over layers.
    - ``stats``: ``{"dropped": fraction dropped, "load": (e,) share of assignments per expert}``.

    Args:
        dim: model width.
        expert: factory of one expert FFN, ``expert(dim, dropout=)`` (any ``model/ffn`` option).
        router: factory of the router, ``router(dim, n_experts=)``.
        n_experts: routed experts.
        n_shared_experts: always-on experts, built from ``expert`` too.
        load_balance_coef: Switch's ``alpha`` (0.01 in the paper).
        z_loss_coef: ST-MoE's z-loss coefficient (1e-3 in the paper).
        dropout: passed to the experts.

    Shapes: ``(b, n, dim) -> (b, n, dim)``.
    """

    def __init__(
        self,
        dim: int,
        *,
        expert: Callable[..., nn.Module],
        router: Callable[..., Router],
        n_experts: int = 4,
        n_shared_experts: int = 0,
        load_balance_coef: float = 0.01,
        z_loss_coef: float = 1e-3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if n_shared_experts < 0:
            raise ConfigError("model.ffn.n_shared_experts", n_shared_experts, "must be >= 0")
        for key, coef in (("load_balance_coef", load_balance_coef), ("z_loss_coef", z_loss_coef)):
            if coef < 0:
                raise ConfigError(f"model.ffn.{key}", coef, "must be >= 0 (0 turns the loss off)")
        self.router = router(dim, n_experts=n_experts)
        self.experts = nn.ModuleList(expert(dim, dropout=dropout) for _ in range(n_experts))
        self.shared_experts = nn.ModuleList(expert(dim, dropout=dropout) for _ in range(n_shared_experts))
        self.load_balance_coef, self.z_loss_coef = load_balance_coef, z_loss_coef
        #: run GLU/MLP experts with grouped matmuls (:mod:`zoo.ffn.moe.grouped`); else one by one
        self.grouped = can_group(self.experts)
        self.losses: dict[str, torch.Tensor] = {}
        self.stats: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        routing = self.router(flat)
        out = self.run_experts(flat, routing)
        for shared in self.shared_experts:
            out = out + shared(flat[None])[0]
        self.record(routing)
        return out.view(x.shape)

    # the routing's counts are data: traced, each new routing is a guard failure and a recompilation
    # (torch.compile of a model compiles all around this); eager here, the experts' matmuls run as they are
    @torch.compiler.disable
    def run_experts(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """``(t, dim)`` -> the gate-weighted sum of each token's experts, ``(t, dim)``.

        Token choice moves rows with gathers only (:mod:`zoo.ffn.moe.dispatch`): into one padded
        row per expert and a batched matmul when routing is nearly balanced, else into rows sorted
        by expert and grouped matmuls (or each expert module on its slice).
        """
        if routing.inverse is None:  # expert choice: a token may be picked any number of times
            y = self.experts_forward(x.index_select(0, routing.token), routing.counts)
            y = y * routing.weight.to(y.dtype)[:, None]
            return torch.zeros((x.shape[0], y.shape[1]), device=y.device, dtype=y.dtype).index_add_(0, routing.token, y)
        t, a, e = x.shape[0], routing.token.shape[0], len(routing.counts)
        kept, width = sum(routing.counts), max(routing.counts)
        if self.grouped and 0 < kept == a and e * width <= PADDING_LIMIT * a:
            # one row of `width` slots per expert, one batched matmul
            sorted_pos = padded_positions(routing.counts, width=width, device=x.device)
            row_token = torch.zeros(e * width, device=x.device, dtype=routing.token.dtype).scatter_(0, sorted_pos, routing.token)
            pos = sorted_pos[routing.inverse]
            xs = dispatch(x, row_token, pos)
            y = batched_forward(self.experts, xs.view(e, width, -1)).flatten(0, 1)
        else:
            pos = routing.inverse
            xs = dispatch(x, routing.token, pos)
            y = self.experts_forward(xs if kept == a else xs[:kept], routing.counts)
            if kept < a:  # dropped assignments add nothing
                y = torch.cat([y, y.new_zeros(a - kept, y.shape[1])])
        k = a // max(t, 1)
        y = collect(y, pos).view(k, t, y.shape[-1])
        gate = routing.weight[routing.inverse].to(y.dtype).view(k, t, 1)
        return (y * gate).sum(0)

    def experts_forward(self, xs: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Rows ``xs (a, dim)`` grouped by expert (``counts`` each) through their experts -> ``(a, dim)``."""
        if self.grouped:
            return grouped_forward(self.experts, xs, counts)
        # experts see (1, slice, dim): an FFN's contract is (b, n, dim)
        return torch.cat([expert(chunk[None])[0] for expert, chunk in zip(self.experts, xs.split(counts))])

    def record(self, routing: Routing) -> None:
        """Keep the scaled auxiliary losses (those with a coefficient > 0) and the routing statistics."""
        self.losses = {}
        if self.load_balance_coef > 0 and self.router.needs_balancing:
            self.losses["load_balance"] = self.load_balance_coef * load_balancing_loss(probs=routing.probs, load=routing.load)
        if self.z_loss_coef > 0:
            self.losses["z_loss"] = self.z_loss_coef * router_z_loss(routing.logits)
        self.stats = {"dropped": routing.dropped.detach(), "load": routing.load.detach()}

    def active_params(self) -> int:
        """Parameters one token passes through on average: router, shared experts and its experts' share
        (what :mod:`zoo.arch.cost` asks of every module that answers it)."""
        per_expert = n_params(self.experts[0]) if len(self.experts) else 0
        routed = round(self.router.experts_per_token * per_expert)
        return n_params(self.router) + sum(n_params(s) for s in self.shared_experts) + routed

