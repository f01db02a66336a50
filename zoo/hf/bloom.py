"""BLOOM (BigScience 2022, arXiv:2211.05100).

Composition: causal LM, pre-norm LayerNorm with a LayerNorm right after the embedding
(``embed_norm``), ALiBi, GeLU (tanh) MLP and attention with biases, tied embeddings.

BLOOM adds ``slope * k`` to every score of a query, where zoo's ALiBi adds ``-slope * (q - k)``: the
two differ by ``slope * q``, the same for every key of the query, which a softmax ignores. Its slopes
are zoo's :func:`~zoo.pos.alibi_slopes`. ``query_key_value`` interleaves q, k and v per head:
``(heads, 3, head_dim)`` along its output.
"""

import torch
from einops import rearrange
from omegaconf import DictConfig

from zoo.hf.family import Family, Rule, expect, expect_slots, fmt, linear, rename, require


def split_heads_qkv(n_heads: int):
    """``query_key_value`` weight ``(heads * 3 * d, dim)`` or bias -> q, k, v, each ``(heads * d, ...)``."""

    def split(w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = rearrange(w, "(h three d) ... -> three (h d) ...", h=n_heads, three=3)
        return tuple(parts)

    return split


def join_heads_qkv(n_heads: int):
    def join(*qkv: torch.Tensor) -> tuple[torch.Tensor]:
        return (rearrange(torch.stack(qkv), "three (h d) ... -> (h three d) ...", h=n_heads),)

    return join


def fused_attention(hf: str, zoo: str, *, n_heads: int, bias: bool = True) -> list[Rule]:
    """The per-head interleaved ``query_key_value`` (weight, and bias) as zoo's q, k and v projections."""
    return [
        Rule((f"{hf}.{part}",), tuple(f"{zoo}.{p}_proj.{part}" for p in "qkv"), split_heads_qkv(n_heads), join_heads_qkv(n_heads))
        for part in (("weight", "bias") if bias else ("weight",))
    ]


class Bloom(Family):
    """``BloomForCausalLM``: ``transformer.h.{i}.self_attention.query_key_value``, ``mlp.dense_h_to_4h``."""

    model_types = ("bloom",)
    hf_class = "BloomForCausalLM"
    base_prefix = "transformer."
    embed = "transformer.word_embeddings.weight"
    tie_default = True
    known_keys = frozenset(
        """vocab_size hidden_size n_embed n_layer num_hidden_layers n_head num_attention_heads layer_norm_epsilon
        hidden_dropout attention_dropout pretraining_tp slow_but_exact tie_word_embeddings seq_length
        masked_softmax_fusion offset_alibi skip_bias_add skip_bias_add_qkv attention_softmax_in_fp32 bias_dropout_fusion
        unk_token_id apply_residual_connection_post_layernorm""".split()
    )

    def n_layers(self, c: dict) -> int:
        return c.get("n_layer", c.get("num_hidden_layers", 2))

    def n_heads(self, c: dict) -> int:
        return c.get("n_head", c.get("num_attention_heads", 8))

    def overrides(self, c: dict) -> list[str]:
        require(c, "apply_residual_connection_post_layernorm", [False], default=False)
        dim = c.get("hidden_size", c.get("n_embed", 64))
        return [
            "model=causal",
            "model/norm=layernorm",
            "model/residual=pre",
            "model/ffn=gelu",
            "model/pos=alibi",
            "model/attention=mha",
            f"model.vocab_size={c.get('vocab_size', 250880)}",
            f"model.dim={dim}",
            f"model.n_layers={self.n_layers(c)}",
            f"model.n_heads={self.n_heads(c)}",
            "model.head_dim=null",
            f"model.max_seq_len={c.get('seq_length', 2048)}",  # ALiBi has no length limit
            "model.embed_norm=true",
            f"model.norm.eps={fmt(float(c.get('layer_norm_epsilon', 1e-5)))}",
            "model.norm.bias=true",
            "model.attention.bias=true",
            f"model.ffn.hidden_dim={4 * dim}",
            "model.ffn.bias=true",
            # BLOOM's GeLU is the tanh form, written with sqrt(2 / pi) rounded to 0.79788456
            "++model.ffn.approximate=tanh",
        ]

    def rules(self, c: dict) -> list[Rule]:
        rules = [rename("transformer.word_embeddings.weight", "embed.weight")]
        for part in ("weight", "bias"):
            rules.append(rename(f"transformer.word_embeddings_layernorm.{part}", f"stack.embed_norm.{part}"))
            rules.append(rename(f"transformer.ln_f.{part}", f"stack.norm.{part}"))
        for i in range(self.n_layers(c)):
            hf, zoo = f"transformer.h.{i}.", f"stack.layers.{i}."
            rules += fused_attention(f"{hf}self_attention.query_key_value", f"{zoo}attn", n_heads=self.n_heads(c))
            rules += linear(f"{hf}self_attention.dense", f"{zoo}attn.o_proj", bias=True)
            rules += linear(f"{hf}mlp.dense_h_to_4h", f"{zoo}ffn.up_proj", bias=True)
            rules += linear(f"{hf}mlp.dense_4h_to_h", f"{zoo}ffn.down_proj", bias=True)
            rules += linear(f"{hf}input_layernorm", f"{zoo}norms.0", bias=True)
            rules += linear(f"{hf}post_attention_layernorm", f"{zoo}norms.1", bias=True)
        return rules

    def export_config(self, m: DictConfig) -> dict:
        expect_slots(
            m, self.hf_class, arch="zoo.arch.CausalLM", norm="zoo.norm.LayerNorm", residual="zoo.residual.PreNorm",
            pos="zoo.pos.ALiBi", attention="zoo.attention.Attention", ffn="zoo.ffn.GeLUMLP",
        )
        for key, actual, allowed in (
            ("embed_norm", m.get("embed_norm"), [True]),
            ("final_norm", m.get("final_norm"), [None, True]),
            ("head_dim", m.get("head_dim"), [None, m.dim // m.n_heads]),
            ("norm.bias", m.norm.get("bias", True), [True]),
            ("attention.n_kv_heads", m.attention.get("n_kv_heads"), [None, m.n_heads]),
            ("attention.window", m.attention.get("window"), [None]),
            ("attention.bias", m.attention.get("bias"), [True]),
            ("attention.qkv_bias", m.attention.get("qkv_bias"), [None, True]),
            ("attention.scale", m.attention.get("scale"), [None]),
            ("ffn.bias", m.ffn.get("bias"), [True]),
            ("ffn.approximate", m.ffn.get("approximate"), ["tanh"]),
            ("ffn.hidden_dim", m.ffn.get("hidden_dim"), [None, 4 * m.dim]),
        ):
            expect(m, key, actual, allowed, self.hf_class)
        return {
            "vocab_size": m.vocab_size,
            "hidden_size": m.dim,
            "n_layer": m.n_layers,
            "n_head": m.n_heads,
            "layer_norm_epsilon": float(m.norm.get("eps", 1e-5)),
        }
