"""GPT-NeoX (Black et al. 2022, arXiv:2204.06745), as in Pythia (Biderman et al. 2023, arXiv:2304.01373).

Composition: causal LM, LayerNorm, RoPE on a share of each head (``rotary_pct``, 0.25 by default:
zoo's ``model.pos.fraction``), GeLU MLP with biases, attention with biases, untied head; the
parallel block with a norm per sub-layer (``use_parallel_residual``: zoo's ``parallel_two_norms``),
pre-norm otherwise. ``query_key_value`` interleaves q, k and v per head, as BLOOM's does.
"""

import torch
from omegaconf import DictConfig

from zoo.errors import ConfigError
from zoo.hf.bloom import fused_attention
from zoo.hf.family import Family, Rule, expect, expect_slots, ffn_overrides, fmt, linear, rename, rope_settings
from zoo.hf.gpt2 import MLP_NAMES

#: ``use_parallel_residual`` -> the zoo residual wiring
RESIDUALS = {True: "parallel_two_norms", False: "pre"}


class GPTNeoX(Family):
    """``GPTNeoXForCausalLM``: ``gpt_neox.layers.{i}.attention.query_key_value``, ``mlp.dense_h_to_4h``; ``embed_out``."""

    model_types = ("gpt_neox",)
    hf_class = "GPTNeoXForCausalLM"
    base_prefix = "gpt_neox."
    head = "embed_out.weight"
    embed = "gpt_neox.embed_in.weight"
    tie_default = False
    # causal-mask and RoPE buffers of older checkpoints
    buffers = (".attention.bias", ".attention.masked_bias", "rotary_emb.inv_freq")
    known_keys = frozenset(
        """vocab_size hidden_size num_hidden_layers num_attention_heads intermediate_size hidden_act attention_dropout
        hidden_dropout classifier_dropout max_position_embeddings layer_norm_eps tie_word_embeddings
        use_parallel_residual rope_parameters rope_scaling rotary_pct rotary_emb_base attention_bias""".split()
    )

    def canonical(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # transformers 5 calls the head lm_head in memory and embed_out in checkpoints
        if "lm_head.weight" in weights and self.head not in weights:
            weights = {self.head if name == "lm_head.weight" else name: w for name, w in weights.items()}
        return weights

    def overrides(self, c: dict) -> list[str]:
        theta, fraction = rope_settings(c, theta=c.get("rotary_emb_base", 10000.0), fraction=c.get("rotary_pct", 0.25))
        dim = c.get("hidden_size", 6144)
        return [
            "model=causal",
            "model/norm=layernorm",
            f"model/residual={RESIDUALS[bool(c.get('use_parallel_residual', True))]}",
            "model/pos=rope",
            "model/attention=mha",
            f"model.vocab_size={c.get('vocab_size', 50432)}",
            f"model.dim={dim}",
            f"model.n_layers={c.get('num_hidden_layers', 44)}",
            f"model.n_heads={c.get('num_attention_heads', 64)}",
            "model.head_dim=null",
            f"model.max_seq_len={c.get('max_position_embeddings', 2048)}",
            f"model.norm.eps={fmt(float(c.get('layer_norm_eps', 1e-5)))}",
            "model.norm.bias=true",
            f"model.pos.theta={fmt(theta)}",
            f"model.pos.fraction={fmt(fraction)}",
            f"model.attention.bias={fmt(bool(c.get('attention_bias', True)))}",
            *ffn_overrides(
                "hidden_act", c.get("hidden_act", "gelu"), gated=False, hidden_dim=c.get("intermediate_size", 4 * dim), bias=True
            ),
        ]

    def rules(self, c: dict) -> list[Rule]:
        bias = bool(c.get("attention_bias", True))
        rules = [rename("gpt_neox.embed_in.weight", "embed.weight")]
        rules += linear("gpt_neox.final_layer_norm", "stack.norm", bias=True)
        for i in range(c.get("num_hidden_layers", 44)):
            hf, zoo = f"gpt_neox.layers.{i}.", f"stack.layers.{i}."
            rules += fused_attention(f"{hf}attention.query_key_value", f"{zoo}attn", n_heads=c.get("num_attention_heads", 64), bias=bias)
            rules += linear(f"{hf}attention.dense", f"{zoo}attn.o_proj", bias=bias)
            rules += linear(f"{hf}mlp.dense_h_to_4h", f"{zoo}ffn.up_proj", bias=True)
            rules += linear(f"{hf}mlp.dense_4h_to_h", f"{zoo}ffn.down_proj", bias=True)
            rules += linear(f"{hf}input_layernorm", f"{zoo}norms.0", bias=True)
            rules += linear(f"{hf}post_attention_layernorm", f"{zoo}norms.1", bias=True)
        return rules

    def export_config(self, m: DictConfig) -> dict:
        expect_slots(m, self.hf_class, arch="zoo.arch.CausalLM", norm="zoo.norm.LayerNorm", pos="zoo.pos.RoPE", attention="zoo.attention.Attention")
        residual = m.residual._target_
        expect(m, "residual._target_", residual, ["zoo.residual.ParallelTwoNorms", "zoo.residual.PreNorm"], self.hf_class)
        bias = bool(m.attention.get("bias", False))
        for key, actual, allowed in (
            ("embed_norm", m.get("embed_norm", False), [False]),
            ("final_norm", m.get("final_norm"), [None, True]),
            ("head_dim", m.get("head_dim"), [None, m.dim // m.n_heads]),
            ("norm.bias", m.norm.get("bias", True), [True]),
            ("attention.n_kv_heads", m.attention.get("n_kv_heads"), [None, m.n_heads]),
            ("attention.window", m.attention.get("window"), [None]),
            ("attention.qkv_bias", m.attention.get("qkv_bias"), [None, bias]),
            ("attention.scale", m.attention.get("scale"), [None]),
            ("ffn.bias", m.ffn.get("bias"), [True]),
        ):
            expect(m, key, actual, allowed, self.hf_class)
        act = MLP_NAMES.get((m.ffn._target_, m.ffn.get("approximate", "none")))
        if act is None:
            raise ConfigError("model.ffn._target_", m.ffn._target_, f"{self.hf_class} needs a two-matrix FFN: gelu or relu")
        theta, fraction = float(m.pos.get("theta", 10000.0)), float(m.pos.get("fraction", 1.0))
        return {
            "vocab_size": m.vocab_size,
            "hidden_size": m.dim,
            "num_hidden_layers": m.n_layers,
            "num_attention_heads": m.n_heads,
            "intermediate_size": m.ffn.get("hidden_dim") or 4 * m.dim,
            "hidden_act": act,
            "max_position_embeddings": m.max_seq_len,
            "layer_norm_eps": float(m.norm.get("eps", 1e-5)),
            "use_parallel_residual": residual == "zoo.residual.ParallelTwoNorms",
            "attention_bias": bias,
            "rope_parameters": {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": fraction},
            "rotary_emb_base": theta,
            "rotary_pct": fraction,
        }
