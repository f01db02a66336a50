"""DeepSeek-V3 (DeepSeek-AI 2024, arXiv:2412.19437): multi-head latent attention and a mixture of experts.

Composition: Llama's pre-norm block and names around two DeepSeek parts. Attention is
``model/attention=mla`` (``q_lora_rank``, ``kv_lora_rank``, ``qk_nope_head_dim``, ``v_head_dim``;
``model.head_dim`` is ``qk_rope_head_dim``). The first ``first_k_dense_replace`` layers have a dense
SwiGLU FFN (``intermediate_size``), the others a mixture of ``n_routed_experts`` SwiGLU experts
(``moe_intermediate_size``) plus shared experts, routed by ``model/ffn/router=grouped_sigmoid``
(sigmoid affinities, ``e_score_correction_bias``, ``n_group`` / ``topk_group``, ``norm_topk_prob``,
``routed_scaling_factor``): ``model/layers=moe_every_other`` with the pattern of dense and MoE layers.

Two layouts differ from zoo's, both converted exactly:

- ``rope_interleave``: DeepSeek rotates channel pairs ``(0, 1), (2, 3), ...``, zoo's RoPE pairs ``i``
  with ``i + d/2``. Permuting the rotary rows of the query and latent projections (evens first, then
  odds) turns one into the other, and the rotated halves come out in the order transformers lays them.
- transformers keeps the ``n_shared_experts`` shared experts as one MLP of ``n * moe_intermediate_size``
  hidden units; a gated MLP is a sum over its hidden units, so it splits into ``n`` experts.

Transformers 5 fuses the experts in memory (``mlp.experts.gate_up_proj``, ``down_proj``); its
checkpoints keep one matrix per expert, the layout the rules name.
"""

import math
import re

import torch
from omegaconf import DictConfig, OmegaConf

from zoo.errors import ConfigError
from zoo.ffn.glu import parameter_matched_hidden
from zoo.hf.family import Rule, expect, expect_slots, ffn_overrides, fmt, layer_kinds, linear, rename, require, unfused_experts
from zoo.hf.gemma import period
from zoo.hf.llama import Llama
from zoo.hf.rope import rope_export, rope_overrides
from zoo.pos.rope_scaling import yarn_temperature

FUSED = re.compile(r"(model\.layers\.\d+\.mlp\.experts\.)(gate_up_proj|down_proj)$")
LAYER = re.compile(r"model\.layers\.(\d+)\.")
MOE_KIND = "model.layers.kinds.moe.ffn"
GLU = ("gate_proj", "up_proj", "down_proj")


def interleaved_to_halves(d: int) -> torch.Tensor:
    """Row order that takes pairs ``(0, 1), (2, 3), ...`` to zoo's halves: evens first, then odds."""
    return torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])


def permute_rope_rows(w: torch.Tensor, *, heads: int, nope: int, rope: int, order: torch.Tensor) -> torch.Tensor:
    """``w`` with the last ``rope`` of every ``nope + rope`` rows of each of ``heads`` groups in ``order``."""
    groups = w.reshape(heads, nope + rope, *w.shape[1:])
    return torch.cat([groups[:, :nope], groups[:, nope:][:, order]], dim=1).reshape(w.shape)


def split_shared(n: int, *names: str) -> Rule:
    """One gated MLP of ``n * h`` hidden units as ``n`` experts of ``h`` (gate, up and down of each)."""

    def to_zoo(gate, up, down):
        return tuple(t for g, u, d in zip(gate.chunk(n), up.chunk(n), down.chunk(n, dim=1)) for t in (g, u, d))

    def to_hf(*parts):
        return torch.cat(parts[0::3]), torch.cat(parts[1::3]), torch.cat(parts[2::3], dim=1)

    hf = tuple(f"{names[0]}{p}.weight" for p in GLU)
    zoo = tuple(f"{names[1]}{s}.{p}.weight" for s in range(n) for p in GLU)
    return Rule(hf, zoo, to_zoo, to_hf)


class DeepseekV3(Llama):
    """``DeepseekV3ForCausalLM``: MLA (``self_attn.q_a_proj`` ... ``kv_b_proj``) and ``mlp.experts`` / ``mlp.gate``."""

    model_types = ("deepseek_v3",)
    hf_class = "DeepseekV3ForCausalLM"
    buffers = ("inv_freq",)
    known_keys = Llama.known_keys | {
        "moe_intermediate_size", "n_shared_experts", "n_routed_experts", "num_local_experts", "routed_scaling_factor",
        "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "v_head_dim", "qk_nope_head_dim", "qk_head_dim", "n_group",
        "topk_group", "num_experts_per_tok", "first_k_dense_replace", "norm_topk_prob", "rope_interleave",
        # the multi-token-prediction layers: transformers' DeepseekV3ForCausalLM, like zoo, skips them (skipped)
        "num_nextn_predict_layers", "num_mtp_layers", "output_router_logits",
    }  # fmt: skip
    #: transformers' values of the keys a config may leave out
    defaults = dict(
        moe_intermediate_size=2048, n_shared_experts=1, n_routed_experts=256, routed_scaling_factor=2.5, kv_lora_rank=512,
        q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128, n_group=8, topk_group=4,
        num_experts_per_tok=8, first_k_dense_replace=3, norm_topk_prob=True, rope_interleave=True, max_position_embeddings=4096,
    )  # fmt: skip

    def filled(self, c: dict) -> dict:
        c = {**self.defaults, **c}
        return {**c, "n_routed_experts": c.get("num_local_experts", c["n_routed_experts"])}

    def kinds(self, c: dict) -> list[str]:
        """``dense`` or ``moe`` for each layer."""
        return ["dense" if i < c["first_k_dense_replace"] else "moe" for i in range(c["num_hidden_layers"])]

    # -- import -----------------------------------------------------------------------------------

    def overrides(self, c: dict) -> list[str]:
        c = self.filled(c)
        if (c.get("num_key_value_heads") or c["num_attention_heads"]) != c["num_attention_heads"]:
            raise ConfigError("hf_config.num_key_value_heads", c["num_key_value_heads"], f"num_attention_heads={c['num_attention_heads']}: MLA has no KV heads")
        require(c, "hidden_act", ["silu"], default="silu")
        if c["n_shared_experts"] < 1:
            raise ConfigError("hf_config.n_shared_experts", c["n_shared_experts"], "at least 1 (zoo maps the shared MLP to that many experts)")
        bias = bool(c.get("attention_bias", False))
        return [
            "model=causal",
            "model/norm=rmsnorm",
            "model/residual=pre",
            "model/attention=mla",
            f"model.vocab_size={c['vocab_size']}",
            f"model.dim={c['hidden_size']}",
            f"model.n_layers={c['num_hidden_layers']}",
            f"model.n_heads={c['num_attention_heads']}",
            f"model.head_dim={c['qk_rope_head_dim']}",
            f"model.max_seq_len={c['max_position_embeddings']}",
            f"model.norm.eps={fmt(float(c.get('rms_norm_eps', 1e-6)))}",
            *rope_overrides(c),
            f"model.attention.kv_rank={c['kv_lora_rank']}",
            f"model.attention.q_rank={fmt(c['q_lora_rank'])}",
            f"model.attention.nope_head_dim={c['qk_nope_head_dim']}",
            f"model.attention.v_head_dim={c['v_head_dim']}",
            f"model.attention.bias={fmt(bias)}",
            f"model.attention.scale={fmt(self.scale(c))}",
            *self.ffn_layers(c),
        ]

    def scale(self, c: dict) -> float | None:
        """The score scale, ``None`` for zoo's default: YaRN's ``mscale_all_dim`` scales every channel's
        scores by its temperature squared (transformers' ``yarn_apply_mscale``)."""
        params = {**(c.get("rope_parameters") or {}), **(c.get("rope_scaling") or {})}
        if params.get("rope_type", params.get("type", "default")) == "default" or not params.get("mscale_all_dim"):
            return None
        factor = params.get("factor") or c["max_position_embeddings"] / params["original_max_position_embeddings"]
        mscale = yarn_temperature(float(factor), float(params["mscale_all_dim"]))
        return (c["qk_nope_head_dim"] + c["qk_rope_head_dim"]) ** -0.5 * mscale * mscale

    def ffn_layers(self, c: dict) -> list[str]:
        """The dense FFN, the mixture of experts, and which layers have which."""
        kinds = self.kinds(c)
        dense = ffn_overrides("hidden_act", "silu", gated=True, hidden_dim=c["intermediate_size"], bias=False)
        if "moe" not in kinds:
            return dense
        if "dense" not in kinds:
            return ["model/ffn=moe", *self.moe_settings(c, "model.ffn")]
        pattern = period(kinds)
        return [
            *dense,
            "model/layers=moe_every_other",
            f"model.layers.pattern=[{','.join(pattern)}]",
            *self.moe_settings(c, MOE_KIND),
        ]

    def moe_settings(self, c: dict, node: str) -> list[str]:
        return [
            f"model/ffn/router@{node}.router=grouped_sigmoid" if node != "model.ffn" else "model/ffn/router=grouped_sigmoid",
            f"{node}.n_experts={c['n_routed_experts']}",
            f"{node}.n_shared_experts={c['n_shared_experts']}",
            f"{node}.load_balance_coef=0.0",
            f"{node}.z_loss_coef=0.0",
            f"{node}.expert.hidden_dim={c['moe_intermediate_size']}",
            f"{node}.expert.bias=false",
            f"{node}.router.top_k={c['num_experts_per_tok']}",
            f"{node}.router.renormalize={fmt(bool(c['norm_topk_prob']))}",
            f"{node}.router.n_groups={c['n_group']}",
            f"{node}.router.top_k_groups={c['topk_group']}",
            f"{node}.router.scale={fmt(float(c['routed_scaling_factor']))}",
        ]

    def rules(self, c: dict) -> list[Rule]:
        c = self.filled(c)
        bias = bool(c.get("attention_bias", False))
        heads, nope, rope = c["num_attention_heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"]
        to_halves = interleaved_to_halves(rope) if c["rope_interleave"] else torch.arange(rope)
        to_pairs = to_halves.argsort()

        def query(hf: str, zoo: str) -> Rule:
            return Rule(
                (hf,), (zoo,),
                lambda w: (permute_rope_rows(w, heads=heads, nope=nope, rope=rope, order=to_halves),),
                lambda w: (permute_rope_rows(w, heads=heads, nope=nope, rope=rope, order=to_pairs),),
            )  # fmt: skip

        def latent(hf: str, zoo: str) -> Rule:  # kv_rank latent rows, then the shared rotary key's
            rank = c["kv_lora_rank"]
            return Rule(
                (hf,), (zoo,),
                lambda w: (permute_rope_rows(w, heads=1, nope=rank, rope=rope, order=to_halves),),
                lambda w: (permute_rope_rows(w, heads=1, nope=rank, rope=rope, order=to_pairs),),
            )  # fmt: skip

        rules = [rename("model.embed_tokens.weight", "embed.weight"), rename("model.norm.weight", "stack.norm.weight")]
        for i, kind in enumerate(self.kinds(c)):
            hf, zoo = f"model.layers.{i}.", f"stack.layers.{i}."
            a, z = f"{hf}self_attn.", f"{zoo}attn."
            if c["q_lora_rank"] is None:
                rules.append(query(f"{a}q_proj.weight", f"{z}q_proj.weight"))
            else:
                rules += linear(f"{a}q_a_proj", f"{z}q_a_proj", bias=bias)
                rules += [rename(f"{a}q_a_layernorm.weight", f"{z}q_a_norm.weight"), query(f"{a}q_b_proj.weight", f"{z}q_b_proj.weight")]
            rules.append(latent(f"{a}kv_a_proj_with_mqa.weight", f"{z}kv_a_proj.weight"))
            if bias:
                rules.append(latent(f"{a}kv_a_proj_with_mqa.bias", f"{z}kv_a_proj.bias"))
            rules += [rename(f"{a}kv_a_layernorm.weight", f"{z}kv_a_norm.weight"), rename(f"{a}kv_b_proj.weight", f"{z}kv_b_proj.weight")]
            rules += linear(f"{a}o_proj", f"{z}o_proj", bias=bias)
            rules += [rename(f"{hf}{n}.weight", f"{zoo}norms.{j}.weight") for j, n in enumerate(self.block_norms)]
            if kind == "dense":
                rules += [rename(f"{hf}mlp.{p}.weight", f"{zoo}ffn.{p}.weight") for p in GLU]
                continue
            rules += [rename(f"{hf}mlp.gate.weight", f"{zoo}ffn.router.proj.weight")]
            rules += [rename(f"{hf}mlp.gate.e_score_correction_bias", f"{zoo}ffn.router.score_bias")]
            for j in range(c["n_routed_experts"]):
                rules += [rename(f"{hf}mlp.experts.{j}.{p}.weight", f"{zoo}ffn.experts.{j}.{p}.weight") for p in GLU]
            rules.append(split_shared(c["n_shared_experts"], f"{hf}mlp.shared_experts.", f"{zoo}ffn.shared_experts."))
        return rules

    def skipped(self, c: dict, name: str) -> bool:
        # the multi-token-prediction layers follow the last one (model.layers.61 of DeepSeek-V3), and
        # transformers' DeepseekV3ForCausalLM leaves them out when loading
        layer = LAYER.match(name)
        return layer is not None and int(layer.group(1)) >= c["num_hidden_layers"]

    def canonical(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name, w in weights.items():
            match = FUSED.match(name)
            if match is None:
                out[name] = w
            else:
                out |= unfused_experts(match.group(1), match.group(2), w, gate="gate_proj", up="up_proj", down="down_proj")
        return out

    # -- export -----------------------------------------------------------------------------------

    def export_config(self, m: DictConfig) -> dict:
        expect_slots(
            m, self.hf_class, arch="zoo.arch.CausalLM", norm="zoo.norm.RMSNorm", residual="zoo.residual.PreNorm",
            attention="zoo.attention.MultiHeadLatentAttention",
        )  # fmt: skip
        a, heads = m.attention, m.n_heads
        for key, actual, allowed in (
            ("embed_norm", m.get("embed_norm", False), [False]),
            ("final_norm", m.get("final_norm"), [None, True]),
            ("attention.window", a.get("window"), [None]),
            ("attention.eps", float(a.get("eps", 1e-6)), [1e-6]),  # transformers' latent norms keep their default
        ):
            expect(m, key, actual, allowed, self.hf_class)
        rope = m.get("head_dim") or m.dim // heads
        nope = a.get("nope_head_dim") or rope
        bias = bool(a.get("bias", False))
        return {
            "vocab_size": m.vocab_size,
            "hidden_size": m.dim,
            "num_hidden_layers": m.n_layers,
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
            "max_position_embeddings": m.max_seq_len,
            "rms_norm_eps": float(m.norm.get("eps", 1e-6)),
            **self.export_rope_scale(m, nope + rope),
            "rope_interleave": False,  # zoo's halves, written as they are
            "q_lora_rank": a.get("q_rank"),
            "kv_lora_rank": a.get("kv_rank") or 4 * nope,
            "qk_rope_head_dim": rope,
            "qk_nope_head_dim": nope,
            "v_head_dim": a.get("v_head_dim") or nope,
            "attention_bias": bias,
            "hidden_act": "silu",
            **self.export_ffns(m),
        }

    def export_rope_scale(self, m: DictConfig, qk_head_dim: int) -> dict:
        """RoPE, and a score scale other than ``qk_head_dim ** -0.5`` as YaRN's ``mscale_all_dim``
        (the inverse of :meth:`scale`), the one way transformers' DeepSeek-V3 changes it."""
        out = rope_export(m, self.hf_class)
        scale = m.attention.get("scale")
        if scale is None:
            return out
        params = out["rope_parameters"]
        if params["rope_type"] != "yarn" or float(params["factor"]) <= 1.0 or float(scale) < qk_head_dim**-0.5:
            raise ConfigError("model.attention.scale", scale, f"null: {self.hf_class} changes the score scale only by YaRN's mscale_all_dim")
        mscale = (float(scale) / qk_head_dim**-0.5) ** 0.5
        params["mscale_all_dim"] = (mscale - 1.0) / (0.1 * math.log(float(params["factor"])))
        out["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
        return out

    def layer_ffns(self, m: DictConfig) -> list[DictConfig]:
        """The FFN config of each layer: the model's, or its kind's own option."""
        layers = m.get("layers")
        out = []
        for kind in layer_kinds(m):
            overrides = {} if layers is None else dict(layers.kinds.get(kind) or {})
            if set(overrides) - {"ffn"} or ("ffn" in overrides and "_target_" not in overrides["ffn"]):
                raise ConfigError(f"model.layers.kinds.{kind}", overrides, f"{self.hf_class} layers differ only in their FFN option")
            out.append(overrides.get("ffn", m.ffn))
        return out

    def export_ffns(self, m: DictConfig) -> dict:
        ffns = self.layer_ffns(m)
        is_moe = [target(f) == "zoo.ffn.MoE" for f in ffns]
        first_moe = is_moe.index(True) if any(is_moe) else len(ffns)
        if not all(is_moe[first_moe:]):
            raise ConfigError("model.layers.pattern", list(m.layers.pattern), f"{self.hf_class} has dense layers first, then MoE layers")
        dense = [f for f in ffns if target(f) != "zoo.ffn.MoE"]
        out = {"first_k_dense_replace": first_moe}
        for f in dense:
            expect(m, "ffn._target_", target(f), ["zoo.ffn.SwiGLU"], self.hf_class)
            expect(m, "ffn.bias", bool(f.get("bias", False)), [False], self.hf_class)
        hidden = {f.get("hidden_dim") or parameter_matched_hidden(m.dim) for f in dense}
        if len(hidden) > 1:
            raise ConfigError("model.ffn.hidden_dim", sorted(hidden), f"{self.hf_class} has one intermediate_size")
        moe = next((f for f in ffns if target(f) == "zoo.ffn.MoE"), None)
        if moe is None:  # no MoE layer: the expert settings are never read
            return {**out, "intermediate_size": hidden.pop(), "n_routed_experts": 1, "n_group": 1, "topk_group": 1, "num_experts_per_tok": 1}
        if any(not equal(f, moe) for f in ffns[first_moe:]):
            raise ConfigError("model.layers.kinds", "moe", f"{self.hf_class} has one MoE for every MoE layer")
        router, expert = moe.router, moe.expert
        for key, actual, allowed in (
            ("ffn.router._target_", target(router), ["zoo.ffn.moe.GroupedSigmoidRouter"]),
            ("ffn.router.capacity_factor", router.get("capacity_factor"), [None]),
            ("ffn.expert._target_", target(expert), ["zoo.ffn.SwiGLU"]),
            ("ffn.expert.bias", bool(expert.get("bias", False)), [False]),
        ):
            expect(m, key, actual, allowed, self.hf_class)
        if moe.get("n_shared_experts", 0) < 1:
            raise ConfigError("model.ffn.n_shared_experts", moe.get("n_shared_experts", 0), f"{self.hf_class} has at least 1 shared expert")
        expert_hidden = expert.get("hidden_dim") or parameter_matched_hidden(m.dim)
        return {
            **out,
            "intermediate_size": hidden.pop() if hidden else expert_hidden,
            "moe_intermediate_size": expert_hidden,
            "n_routed_experts": moe.n_experts,
            "n_shared_experts": moe.n_shared_experts,
            "num_experts_per_tok": router.top_k,
            "norm_topk_prob": bool(router.renormalize),
            "n_group": router.n_groups,
            "topk_group": router.top_k_groups,
            "routed_scaling_factor": float(router.scale),
        }

    def export_layers(self, m: DictConfig) -> dict:
        return {}  # the pattern of dense and MoE layers is first_k_dense_replace (export_ffns)


def target(node: DictConfig) -> str:
    return str(node.get("_target_", ""))


def equal(a: DictConfig, b: DictConfig) -> bool:
    return OmegaConf.to_container(a, resolve=True) == OmegaConf.to_container(b, resolve=True)
