"""Auxiliary losses of the mixture-of-experts routers, and their collection over a model's layers.

Each :class:`~zoo.ffn.moe.MoE` keeps the losses of its latest forward pass (``module.losses``,
already multiplied by their coefficients); an architecture's ``aux_loss()`` is :func:`aux_loss`
of itself, which the training objective adds to the task loss.

Letters: ``t`` tokens, ``e`` experts.
"""

import torch
from torch import nn


def load_balancing_loss(*, probs: torch.Tensor, load: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's balancing loss without its coefficient: ``e * sum_i f_i * P_i``.

    Fedus et al. 2021, arXiv:2101.03961, eq. 4. ``f_i`` (``load``, not differentiable) is the
    fraction of assignments routed to expert ``i``, ``P_i`` the mean router probability of expert
    ``i``. It is 1 when routing is uniform and grows to ``e`` when one expert takes everything.

    Args:
        probs: ``(t, e)`` router probabilities.
        load: ``(e,)`` fraction of the assignments per expert (sums to one).

    Returns: a 0-dim tensor.
    """
    return probs.shape[-1] * (load.detach() * probs.mean(dim=0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's router z-loss without its coefficient: the mean of ``logsumexp(logits)^2`` over tokens.

    Zoph et al. 2022, arXiv:2202.08906, eq. 5: it keeps the router logits small, where float
    round-off in the exponential is harmless.

    Args:
        logits: ``(t, e)`` float32 router logits.

    Returns: a 0-dim tensor.
    """
    return torch.logsumexp(logits, dim=-1).square().mean()


def moe_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that keep router losses (every MoE FFN, whatever it wraps)."""
    return [m for m in model.modules() if isinstance(getattr(m, "losses", None), dict)]


def aux_losses(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each auxiliary loss of the latest forward, summed over ``model``'s MoE layers, for logging.

    Returns: ``{"load_balance": ..., "z_loss": ...}`` (only the kinds present; empty for a dense model).
    """
    totals: dict[str, torch.Tensor] = {}
    for module in moe_modules(model):
        for name, value in module.losses.items():
            totals[name] = totals[name] + value if name in totals else value
    return totals


def aux_loss(model: nn.Module) -> torch.Tensor | None:
    """The sum of every auxiliary loss of the latest forward over ``model``'s layers.

    A 0-dim tensor to add to the training loss; ``None`` without MoE layers: nothing to add. (Not a
    constant zero: torch 2.13's inductor folds ``loss + 0`` into ``loss`` and, when the compiled
    objective also returns ``loss.detach()``, hands back the sum without its gradient.)
    """
    losses = aux_losses(model)
    return sum(losses.values()) if losses else None


def moe_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    """Routing statistics of the latest forward, for logging (detached 0-dim tensors).

    Returns: ``dropped`` (mean over MoE layers of the dropped fraction), ``max_load`` (over
    layers, the busiest expert's share times the number of experts: 1 is perfectly balanced) and,
    when every layer has as many experts, ``load`` (``(e,)``, each expert's share averaged over
    layers); empty without MoE layers.
    """
    stats = [m.stats for m in moe_modules(model) if getattr(m, "stats", None)]
    if not stats:
        return {}
    out = {
        "dropped": torch.stack([s["dropped"] for s in stats]).mean(),
        "max_load": torch.stack([s["load"].max() * s["load"].numel() for s in stats]).max(),
    }
    if len({s["load"].numel() for s in stats}) == 1:
        out["load"] = torch.stack([s["load"] for s in stats]).mean(0)
    return out
