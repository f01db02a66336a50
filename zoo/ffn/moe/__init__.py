"""Mixture-of-Experts FFN: the ``moe`` option of the ``model/ffn`` slot.

``MoE`` holds any FFN option as its expert, a router (``model/ffn/router``: ``top_k``,
``grouped_sigmoid`` or ``expert_choice``) and the routers' auxiliary losses, which ``model.aux_loss()`` sums over layers.
"""

from zoo.ffn.moe.losses import aux_loss, aux_losses, load_balancing_loss, moe_stats, router_z_loss
from zoo.ffn.moe.moe import MoE
from zoo.ffn.moe.router import ExpertChoiceRouter, GroupedSigmoidRouter, Router, Routing, TopKRouter

__all__ = [
    "MoE",
    "Router",
    "Routing",
    "TopKRouter",
    "ExpertChoiceRouter",
    "GroupedSigmoidRouter",
    "load_balancing_loss",
    "router_z_loss",
    "aux_loss",
    "aux_losses",
    "moe_stats",
]
