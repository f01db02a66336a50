"""Mixtral (Jiang et al. 2024, arXiv:2401.04088): Mistral's layout with a sparse mixture of SwiGLU experts.

Composition: Mistral's, with ``model/ffn=moe``: ``num_local_experts`` SwiGLU experts and the top-k
token-choice router (``model/ffn/router=top_k``) with Mixtral's renormalised gates (a softmax over
the chosen logits), dropless (no capacity), no shared experts, no z-loss.

Checkpoints keep one matrix per expert (``block_sparse_moe.experts.{j}.w1`` gate, ``w3`` up, ``w2``
down, ``block_sparse_moe.gate`` the router), which is also what transformers 5 saves; in memory
transformers 5 fuses them (``mlp.experts.gate_up_proj``, ``mlp.experts.down_proj``, ``mlp.gate``),
which :meth:`Mixtral.canonical` splits back.
"""

import re

import torch
from omegaconf import DictConfig

from zoo.errors import ConfigError
from zoo.ffn.glu import parameter_matched_hidden
from zoo.hf.family import GLU_ACTS, Rule, expect, fmt, rename, unfused_experts
from zoo.hf.llama import glu_act
from zoo.hf.mistral import Mistral, uniform_window

#: expert matrices -> zoo's GLU projections
EXPERT = (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj"))
FUSED = re.compile(r"(model\.layers\.\d+\.)mlp\.(gate\.weight|experts\.gate_up_proj|experts\.down_proj)$")


class Mixtral(Mistral):
    """``MixtralForCausalLM``: Mistral's attention, ``block_sparse_moe`` in place of the MLP."""

    model_types = ("mixtral",)
    hf_class = "MixtralForCausalLM"
    known_keys = Mistral.known_keys | {
        "num_local_experts", "num_experts_per_tok", "router_jitter_noise", "output_router_logits", "router_aux_loss_coef"
    }

    def window(self, c: dict) -> int | None:
        return uniform_window(c, c.get("sliding_window"))

    def ffn_settings(self, c: dict, *, bias: bool) -> list[str]:
        act = c.get("hidden_act", "silu")
        if act not in GLU_ACTS:
            raise ConfigError("hf_config.hidden_act", act, f"zoo has gated experts with: {sorted(GLU_ACTS)}")
        option, approximate = GLU_ACTS[act]
        return [
            "model/ffn=moe",
            f"model/ffn@model.ffn.expert={option}",
            "model/ffn/router=top_k",
            f"model.ffn.n_experts={c.get('num_local_experts', 8)}",
            "model.ffn.n_shared_experts=0",
            f"model.ffn.load_balance_coef={fmt(float(c.get('router_aux_loss_coef', 0.001)))}",
            "model.ffn.z_loss_coef=0.0",
            f"model.ffn.expert.hidden_dim={c['intermediate_size']}",
            "model.ffn.expert.bias=false",
            f"model.ffn.router.top_k={c.get('num_experts_per_tok', 2)}",
            "model.ffn.router.renormalize=true",
            "model.ffn.router.capacity_factor=null",
            f"model.ffn.router.jitter={fmt(float(c.get('router_jitter_noise', 0.0)))}",
            *([f"++model.ffn.expert.approximate={approximate}"] if approximate else []),
        ]

    def ffn_rules(self, c: dict, hf: str, zoo: str, *, bias: bool) -> list[Rule]:
        moe = f"{hf}block_sparse_moe."
        rules = [rename(f"{moe}gate.weight", f"{zoo}ffn.router.proj.weight")]
        for j in range(c.get("num_local_experts", 8)):
            rules += [rename(f"{moe}experts.{j}.{a}.weight", f"{zoo}ffn.experts.{j}.{b}.weight") for a, b in EXPERT]
        return rules

    def canonical(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name, w in weights.items():
            match = FUSED.match(name)
            if match is None:
                out[name] = w
                continue
            moe, part = match.group(1) + "block_sparse_moe.", match.group(2)
            if part == "gate.weight":
                out[moe + part] = w
            else:
                out |= unfused_experts(f"{moe}experts.", part, w, gate="w1", up="w3", down="w2")
        return out

    def export_ffn(self, m: DictConfig) -> dict:
        ffn = m.ffn
        expect(m, "ffn._target_", ffn.get("_target_"), ["zoo.ffn.MoE"], self.hf_class)
        router = ffn.router
        for key, actual, allowed in (
            ("ffn.router._target_", router.get("_target_"), ["zoo.ffn.moe.TopKRouter"]),
            ("ffn.router.renormalize", router.get("renormalize"), [True]),
            ("ffn.router.capacity_factor", router.get("capacity_factor"), [None]),
            ("ffn.n_shared_experts", ffn.get("n_shared_experts", 0), [0]),
            ("ffn.expert.bias", bool(ffn.expert.get("bias", False)), [False]),
        ):
            expect(m, key, actual, allowed, self.hf_class)
        return {
            "hidden_act": glu_act(ffn.expert, self.hf_class),
            "intermediate_size": ffn.expert.get("hidden_dim") or parameter_matched_hidden(m.dim),
            "num_local_experts": ffn.n_experts,
            "num_experts_per_tok": router.top_k,
            "router_jitter_noise": float(router.get("jitter", 0.0)),
            "router_aux_loss_coef": float(ffn.get("load_balance_coef", 0.001)),
        }
