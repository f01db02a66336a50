"""GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners").

Composition: causal LM, pre-norm LayerNorm with biases, learned positions, GeLU MLP (``gelu_new`` is
the tanh approximation), multi-head attention with biases, tied embeddings. GPT-2's ``Conv1D`` stores
weights as ``(in, out)``, the transpose of ``nn.Linear``; ``c_attn`` holds q, k and v side by side.
"""

import torch
from omegaconf import DictConfig

from zoo.errors import ConfigError
from zoo.hf.family import Family, Rule, expect, expect_slots, ffn_overrides, fmt, rename, require, transposed


def split_qkv(w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``c_attn`` ``(dim, 3 dim)`` weight or ``(3 dim,)`` bias -> q, k, v in ``nn.Linear`` layout."""
    return tuple(p.t() if p.ndim == 2 else p for p in w.chunk(3, dim=-1))


def join_qkv(*qkv: torch.Tensor) -> tuple[torch.Tensor]:
    return (torch.cat([p.t() if p.ndim == 2 else p for p in qkv], dim=-1),)


#: zoo's two-matrix FFNs -> GPT-2's ``activation_function``
MLP_NAMES = {("zoo.ffn.GeLUMLP", "tanh"): "gelu_new", ("zoo.ffn.GeLUMLP", "none"): "gelu", ("zoo.ffn.ReLUMLP", "none"): "relu",
             ("zoo.ffn.SquaredReLUMLP", "none"): "relu2"}  # fmt: skip


class GPT2(Family):
    """``GPT2LMHeadModel``: ``transformer.h.{i}.attn.c_attn``, ``mlp.c_fc``, ``ln_1``, ``ln_2``; ``wte``, ``wpe``."""

    model_types = ("gpt2",)
    hf_class = "GPT2LMHeadModel"
    base_prefix = "transformer."
    embed = "transformer.wte.weight"
    tie_default = True
    # causal-mask buffers that checkpoints of transformers < 4.36 still hold
    buffers = (".attn.bias", ".attn.masked_bias")
    known_keys = frozenset(
        """vocab_size n_positions n_ctx n_embd n_layer n_head n_inner activation_function resid_pdrop embd_pdrop
        attn_pdrop layer_norm_epsilon scale_attn_weights reorder_and_upcast_attn tie_word_embeddings summary_type
        summary_use_proj summary_activation summary_proj_to_labels summary_first_dropout
        scale_attn_by_inverse_layer_idx add_cross_attention""".split()
    )

    def overrides(self, c: dict) -> list[str]:
        require(c, "scale_attn_by_inverse_layer_idx", [False], default=False)
        require(c, "add_cross_attention", [False], default=False)
        dim = c.get("n_embd", 768)
        out = [
            "model=causal",
            "model/norm=layernorm",
            "model/residual=pre",
            "model/pos=learned",
            "model/attention=mha",
            f"model.vocab_size={c.get('vocab_size', 50257)}",
            f"model.dim={dim}",
            f"model.n_layers={c.get('n_layer', 12)}",
            f"model.n_heads={c.get('n_head', 12)}",
            "model.head_dim=null",
            f"model.max_seq_len={c.get('n_positions', 1024)}",
            f"model.norm.eps={fmt(float(c.get('layer_norm_epsilon', 1e-5)))}",
            "model.norm.bias=true",
            "model.attention.bias=true",
            *ffn_overrides(
                "activation_function", c.get("activation_function", "gelu_new"), gated=False, hidden_dim=c.get("n_inner") or 4 * dim, bias=True
            ),
        ]
        # without scale_attn_weights GPT-2 does not divide the scores by sqrt(head_dim)
        return out + ([] if c.get("scale_attn_weights", True) else ["++model.attention.scale=1.0"])

    def rules(self, c: dict) -> list[Rule]:
        rules = [
            rename("transformer.wte.weight", "embed.weight"),
            rename("transformer.wpe.weight", "stack.pos.weight"),
            rename("transformer.ln_f.weight", "stack.norm.weight"),
            rename("transformer.ln_f.bias", "stack.norm.bias"),
        ]
        for i in range(c.get("n_layer", 12)):
            hf, zoo = f"transformer.h.{i}.", f"stack.layers.{i}."
            for part in ("weight", "bias"):
                qkv = tuple(f"{zoo}attn.{p}_proj.{part}" for p in "qkv")
                rules.append(Rule((f"{hf}attn.c_attn.{part}",), qkv, split_qkv, join_qkv))
                rules.append(rename(f"{hf}ln_1.{part}", f"{zoo}norms.0.{part}"))
                rules.append(rename(f"{hf}ln_2.{part}", f"{zoo}norms.1.{part}"))
            for hf_name, zoo_name in (("attn.c_proj", "attn.o_proj"), ("mlp.c_fc", "ffn.up_proj"), ("mlp.c_proj", "ffn.down_proj")):
                rules.append(transposed(f"{hf}{hf_name}.weight", f"{zoo}{zoo_name}.weight"))
                rules.append(rename(f"{hf}{hf_name}.bias", f"{zoo}{zoo_name}.bias"))
        return rules

    def export_config(self, m: DictConfig) -> dict:
        expect_slots(
            m, self.hf_class, arch="zoo.arch.CausalLM", norm="zoo.norm.LayerNorm", residual="zoo.residual.PreNorm",
            pos="zoo.pos.LearnedPositions", attention="zoo.attention.Attention",
        )
        for key, actual, allowed in (
            ("embed_norm", m.get("embed_norm", False), [False]),
            ("final_norm", m.get("final_norm"), [None, True]),
            ("head_dim", m.get("head_dim"), [None, m.dim // m.n_heads]),
            ("norm.bias", m.norm.get("bias", True), [True]),
            ("attention.n_kv_heads", m.attention.get("n_kv_heads"), [None, m.n_heads]),
            ("attention.window", m.attention.get("window"), [None]),
            ("attention.bias", m.attention.get("bias"), [True]),
            ("attention.qkv_bias", m.attention.get("qkv_bias"), [None, True]),
            ("attention.scale", m.attention.get("scale"), [None, 1.0]),
            ("ffn.bias", m.ffn.get("bias"), [True]),
        ):
            expect(m, key, actual, allowed, self.hf_class)
        act = MLP_NAMES.get((m.ffn._target_, m.ffn.get("approximate", "none")))
        if act is None:
            raise ConfigError("model.ffn._target_", m.ffn._target_, f"{self.hf_class} needs a two-matrix FFN: gelu or relu")
        return {
            "vocab_size": m.vocab_size,
            "n_embd": m.dim,
            "n_layer": m.n_layers,
            "n_head": m.n_heads,
            "n_positions": m.max_seq_len,
            "n_inner": m.ffn.get("hidden_dim") or 4 * m.dim,
            "activation_function": act,
            "layer_norm_epsilon": float(m.norm.get("eps", 1e-5)),
            "scale_attn_weights": m.attention.get("scale") is None,
        }
