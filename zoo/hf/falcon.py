"""Falcon (Almazrouei et al. 2023, arXiv:2311.16867).

Composition: causal LM, LayerNorm, RoPE, multi-query (falcon-7b) or grouped-query attention
(``new_decoder_architecture``), GeLU MLP; the parallel block ``x + attn(ln(x)) + mlp(ln(x))`` when
``parallel_attn``, pre-norm otherwise. ``bias`` switches every linear bias at once.

All three ``query_key_value`` layouts are one: per KV head, its ``g`` query heads then its key and its
value, ``(kv_heads, g + 2, head_dim)`` along the output. Multi-query is one KV head with ``g = heads``;
the classic multi-head layout ``(heads, 3, head_dim)`` is ``heads`` KV heads with ``g = 1``.

``new_decoder_architecture`` (falcon-40b, falcon-180b) gives the parallel block a norm per sub-layer
(``num_ln_in_parallel_attn=2``): zoo's ``parallel_two_norms``.

Not mapped: ``alibi=True`` (falcon-rw): Falcon scales its ALiBi bias by ``head_dim ** -0.5`` and rounds
the slopes to bfloat16, which zoo's ALiBi does not.
"""

from collections.abc import Callable

import torch
from einops import rearrange
from omegaconf import DictConfig

from zoo.errors import ConfigError
from zoo.hf.family import (
    Family,
    Rule,
    attention_option,
    expect,
    expect_slots,
    ffn_overrides,
    fmt,
    linear,
    rename,
    require,
    rope_settings,
)
from zoo.hf.gpt2 import MLP_NAMES


def grouped_qkv(n_kv_heads: int, n_heads: int) -> tuple[Callable, Callable]:
    """``(split, join)`` between the grouped ``(kv_heads, g + 2, head_dim)`` layout and q, k, v."""
    g = n_heads // n_kv_heads

    def split(w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        w = rearrange(w, "(k s d) ... -> k s d ...", k=n_kv_heads, s=g + 2)
        q = rearrange(w[:, :g], "k g d ... -> (k g d) ...")
        return q, rearrange(w[:, g], "k d ... -> (k d) ..."), rearrange(w[:, g + 1], "k d ... -> (k d) ...")

    def join(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor]:
        q = rearrange(q, "(k g d) ... -> k g d ...", k=n_kv_heads, g=g)
        k, v = (rearrange(t, "(k d) ... -> k 1 d ...", k=n_kv_heads) for t in (k, v))
        return (rearrange(torch.cat([q, k, v], dim=1), "k s d ... -> (k s d) ..."),)

    return split, join


class Falcon(Family):
    """``FalconForCausalLM``: ``transformer.h.{i}.self_attention.query_key_value``, ``mlp.dense_h_to_4h``."""

    model_types = ("falcon",)
    hf_class = "FalconForCausalLM"
    base_prefix = "transformer."
    embed = "transformer.word_embeddings.weight"
    tie_default = True
    buffers = ("rotary_emb.inv_freq",)
    known_keys = frozenset(
        """vocab_size hidden_size n_embed num_hidden_layers n_layer num_attention_heads n_head num_kv_heads n_head_kv
        num_ln_in_parallel_attn layer_norm_epsilon hidden_dropout attention_dropout alibi new_decoder_architecture
        multi_query parallel_attn bias max_position_embeddings rope_parameters rope_theta rope_scaling ffn_hidden_size
        activation tie_word_embeddings apply_residual_connection_post_layernorm num_key_value_heads""".split()
    )

    def sizes(self, c: dict) -> tuple[int, int, int, int]:
        """``(dim, n_layers, n_heads, n_kv_heads)``."""
        n_heads = c.get("num_attention_heads", c.get("n_head", 71))
        if c.get("new_decoder_architecture", False):
            n_kv_heads = c.get("num_kv_heads", c.get("n_head_kv")) or n_heads
        else:
            n_kv_heads = 1 if c.get("multi_query", True) else n_heads
        # transformers >= 5.25 also writes the KV head count it derives from the keys above: a check, not a source
        derived = c.get("num_key_value_heads")
        if derived is not None and derived != n_kv_heads:
            raise ConfigError("hf_config.num_key_value_heads", derived, f"must equal the KV heads the other keys give ({n_kv_heads})")
        return c.get("hidden_size", c.get("n_embed", 4544)), c.get("num_hidden_layers", c.get("n_layer", 32)), n_heads, n_kv_heads

    def residual(self, c: dict) -> str:
        """The ``model/residual`` option: ``parallel`` (one norm), ``parallel_two_norms`` or ``pre``."""
        require(c, "alibi", [False], default=False)
        require(c, "apply_residual_connection_post_layernorm", [False], default=False)
        parallel = c.get("parallel_attn", True)
        if c.get("new_decoder_architecture", False):
            n_norms = c.get("num_ln_in_parallel_attn") or 2
            if not parallel or n_norms not in (1, 2):
                raise ConfigError("hf_config.parallel_attn", parallel, "the new decoder architecture is a parallel block with 1 or 2 norms")
            return "parallel" if n_norms == 1 else "parallel_two_norms"
        return "parallel" if parallel else "pre"

    def overrides(self, c: dict) -> list[str]:
        dim, n_layers, n_heads, n_kv_heads = self.sizes(c)
        theta, fraction = rope_settings(c)
        bias = bool(c.get("bias", False))
        return [
            "model=causal",
            "model/norm=layernorm",
            f"model/residual={self.residual(c)}",
            "model/pos=rope",
            f"model/attention={attention_option(n_heads, n_kv_heads, None)}",
            f"model.vocab_size={c.get('vocab_size', 65024)}",
            f"model.dim={dim}",
            f"model.n_layers={n_layers}",
            f"model.n_heads={n_heads}",
            "model.head_dim=null",
            f"model.max_seq_len={c.get('max_position_embeddings', 2048)}",
            f"model.norm.eps={fmt(float(c.get('layer_norm_epsilon', 1e-5)))}",
            "model.norm.bias=true",
            f"model.pos.theta={fmt(theta)}",
            f"model.pos.fraction={fmt(fraction)}",
            f"model.attention.n_kv_heads={n_kv_heads}",
            f"model.attention.bias={fmt(bias)}",
            *ffn_overrides(
                "activation", c.get("activation", "gelu"), gated=False, hidden_dim=c.get("ffn_hidden_size") or 4 * dim, bias=bias
            ),
        ]

    def rules(self, c: dict) -> list[Rule]:
        dim, n_layers, n_heads, n_kv_heads = self.sizes(c)
        bias, residual = bool(c.get("bias", False)), self.residual(c)
        norms = {
            "parallel": ["input_layernorm"],
            "parallel_two_norms": ["ln_attn", "ln_mlp"],
            "pre": ["input_layernorm", "post_attention_layernorm"],
        }
        split, join = grouped_qkv(n_kv_heads, n_heads)
        rules = [rename("transformer.word_embeddings.weight", "embed.weight")]
        rules += linear("transformer.ln_f", "stack.norm", bias=True)
        for i in range(n_layers):
            hf, zoo = f"transformer.h.{i}.", f"stack.layers.{i}."
            parts = ("weight", "bias") if bias else ("weight",)
            for part in parts:
                qkv = tuple(f"{zoo}attn.{p}_proj.{part}" for p in "qkv")
                rules.append(Rule((f"{hf}self_attention.query_key_value.{part}",), qkv, split, join))
            rules += linear(f"{hf}self_attention.dense", f"{zoo}attn.o_proj", bias=bias)
            rules += linear(f"{hf}mlp.dense_h_to_4h", f"{zoo}ffn.up_proj", bias=bias)
            rules += linear(f"{hf}mlp.dense_4h_to_h", f"{zoo}ffn.down_proj", bias=bias)
            for j, norm in enumerate(norms[residual]):
                rules += linear(f"{hf}{norm}", f"{zoo}norms.{j}", bias=True)
        return rules

    def export_config(self, m: DictConfig) -> dict:
        expect_slots(m, self.hf_class, arch="zoo.arch.CausalLM", norm="zoo.norm.LayerNorm", pos="zoo.pos.RoPE", attention="zoo.attention.Attention")
        residual = m.residual._target_
        residuals = ["zoo.residual.Parallel", "zoo.residual.ParallelTwoNorms", "zoo.residual.PreNorm"]
        expect(m, "residual._target_", residual, residuals, self.hf_class)
        bias = bool(m.attention.get("bias", False))
        n_kv_heads = m.attention.get("n_kv_heads") or m.n_heads
        parallel, two_norms = residual != "zoo.residual.PreNorm", residual == "zoo.residual.ParallelTwoNorms"
        for key, actual, allowed in (
            ("embed_norm", m.get("embed_norm", False), [False]),
            ("final_norm", m.get("final_norm"), [None, True]),
            ("head_dim", m.get("head_dim"), [None, m.dim // m.n_heads]),
            ("norm.bias", m.norm.get("bias", True), [True]),
            ("pos.fraction", float(m.pos.get("fraction", 1.0)), [1.0]),
            ("attention.window", m.attention.get("window"), [None]),
            ("attention.qkv_bias", m.attention.get("qkv_bias"), [None, bias]),
            ("attention.scale", m.attention.get("scale"), [None]),
            ("ffn.bias", bool(m.ffn.get("bias", False)), [bias]),  # Falcon's one `bias` switch
            ("attention.n_kv_heads", n_kv_heads, [1, m.n_heads] if not parallel else [n_kv_heads]),
        ):
            expect(m, key, actual, allowed, self.hf_class)
        act = MLP_NAMES.get((m.ffn._target_, m.ffn.get("approximate", "none")))
        if act is None:
            raise ConfigError("model.ffn._target_", m.ffn._target_, f"{self.hf_class} needs a two-matrix FFN: gelu or relu")
        theta = float(m.pos.get("theta", 10000.0))
        # the classic layouts have one norm and one or all KV heads; anything else is the new architecture
        new_architecture = two_norms or n_kv_heads not in (1, m.n_heads)
        return {
            "vocab_size": m.vocab_size,
            "hidden_size": m.dim,
            "num_hidden_layers": m.n_layers,
            "num_attention_heads": m.n_heads,
            "num_kv_heads": n_kv_heads,
            "num_key_value_heads": n_kv_heads,
            "new_decoder_architecture": new_architecture,
            "num_ln_in_parallel_attn": (2 if two_norms else 1) if new_architecture else None,
            "multi_query": n_kv_heads == 1,
            "parallel_attn": parallel,
            "alibi": False,
            "bias": bias,
            "layer_norm_epsilon": float(m.norm.get("eps", 1e-5)),
            "ffn_hidden_size": m.ffn.get("hidden_dim") or 4 * m.dim,
            "activation": act,
            "max_position_embeddings": m.max_seq_len,
            "rope_parameters": {"rope_type": "default", "rope_theta": theta},
            "rope_theta": theta,
        }
