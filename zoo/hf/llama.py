"""Llama (Touvron et al. 2023, arXiv:2302.13971) and the families that share its layout.

Composition: causal LM, pre-norm RMSNorm, gated FFN (SwiGLU for ``hidden_act=silu``), RoPE with the
half-split pairing of ``rotate_half`` (plain or scaled: linear, dynamic NTK, YaRN, Llama 3.1),
grouped-query attention. Mistral and Qwen2 subclass it and change only the window and the biases.
"""

from omegaconf import DictConfig

from zoo.errors import ConfigError
from zoo.ffn.glu import parameter_matched_hidden
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
)
from zoo.hf.rope import rope_export, rope_overrides

#: zoo's gated FFN classes -> ``hidden_act`` (GeGLU by its approximation)
GLU_NAMES = {
    "zoo.ffn.SwiGLU": "silu",
    "zoo.ffn.ReGLU": "relu",
    ("zoo.ffn.GeGLU", "none"): "gelu",
    ("zoo.ffn.GeGLU", "tanh"): "gelu_pytorch_tanh",
}


def glu_act(ffn: DictConfig, family: str) -> str:
    """``hidden_act`` of a gated FFN's config node."""
    key = (ffn._target_, ffn.get("approximate", "none")) if ffn._target_ == "zoo.ffn.GeGLU" else ffn._target_
    if key not in GLU_NAMES:
        raise ConfigError("model.ffn._target_", ffn._target_, f"{family} needs a gated FFN: swiglu, geglu or reglu")
    return GLU_NAMES[key]


class Llama(Family):
    """``LlamaForCausalLM``: ``model.layers.{i}.self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``."""

    model_types = ("llama",)
    hf_class = "LlamaForCausalLM"
    base_prefix = "model."
    embed = "model.embed_tokens.weight"
    tie_default = False
    buffers = ("rotary_emb.inv_freq",)
    known_keys = frozenset(
        """vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads num_key_value_heads
        head_dim hidden_act max_position_embeddings rms_norm_eps tie_word_embeddings rope_parameters rope_theta
        rope_scaling attention_bias attention_dropout mlp_bias pretraining_tp""".split()
    )

    # -- what differs between the Llama-layout families -------------------------------------------

    #: ``model/residual`` option and class of the block, and the checkpoint names of its two norms
    residual: tuple[str, str] = ("pre", "zoo.residual.PreNorm")
    block_norms: tuple[str, str] = ("input_layernorm", "post_attention_layernorm")
    #: ``model/attention`` option and QK-norm class (``self_attn.{q,k}_norm``), or ``None`` without QK-norm
    qk_norm: tuple[str, str] | None = None

    def window(self, c: dict) -> int | None:
        """The sliding window of every layer, or ``None``."""
        return None

    def biases(self, c: dict) -> tuple[bool, bool, bool]:
        """``(qkv, o_proj, mlp)`` biases."""
        bias = bool(c.get("attention_bias", False))
        return bias, bias, bool(c.get("mlp_bias", False))

    # -- import -----------------------------------------------------------------------------------

    def sizes(self, c: dict) -> tuple[int, int, int]:
        """``(n_heads, n_kv_heads, head_dim)``."""
        n_heads = c["num_attention_heads"]
        n_kv_heads = c.get("num_key_value_heads") or n_heads
        return n_heads, n_kv_heads, c.get("head_dim") or c["hidden_size"] // n_heads

    def overrides(self, c: dict) -> list[str]:
        n_heads, n_kv_heads, head_dim = self.sizes(c)
        qkv_bias, o_bias, mlp_bias = self.biases(c)
        return [
            "model=causal",
            "model/norm=rmsnorm",
            f"model/residual={self.residual[0]}",
            f"model/attention={self.attention(c)}",
            f"model.vocab_size={c['vocab_size']}",
            f"model.dim={c['hidden_size']}",
            f"model.n_layers={c['num_hidden_layers']}",
            f"model.n_heads={n_heads}",
            f"model.head_dim={head_dim}",
            f"model.max_seq_len={c.get('max_position_embeddings', 2048)}",
            f"model.norm.eps={fmt(float(c.get('rms_norm_eps', 1e-6)))}",
            *self.rope(c),
            f"model.attention.n_kv_heads={n_kv_heads}",
            f"model.attention.window={fmt(self.window(c))}",
            f"model.attention.bias={fmt(o_bias)}",
            f"++model.attention.qkv_bias={fmt(qkv_bias)}",
            *([f"model.attention.qk_norm.eps={fmt(float(c.get('rms_norm_eps', 1e-6)))}"] if self.qk_norm else []),
            *self.ffn_settings(c, bias=mlp_bias),
        ]

    def attention(self, c: dict) -> str:
        """The ``model/attention`` option."""
        n_heads, n_kv_heads, _ = self.sizes(c)
        return self.qk_norm[0] if self.qk_norm else attention_option(n_heads, n_kv_heads, self.window(c))

    def rope(self, c: dict) -> list[str]:
        """``model/pos`` and its settings."""
        return rope_overrides(c)

    def ffn_settings(self, c: dict, *, bias: bool) -> list[str]:
        """``model/ffn`` and its settings."""
        return ffn_overrides("hidden_act", c.get("hidden_act", "silu"), gated=True, hidden_dim=c["intermediate_size"], bias=bias)

    def rules(self, c: dict) -> list[Rule]:
        qkv_bias, o_bias, mlp_bias = self.biases(c)
        rules = [rename("model.embed_tokens.weight", "embed.weight"), rename("model.norm.weight", "stack.norm.weight")]
        for i in range(c["num_hidden_layers"]):
            hf, zoo = f"model.layers.{i}.", f"stack.layers.{i}."
            for name in ("q_proj", "k_proj", "v_proj"):
                rules += linear(f"{hf}self_attn.{name}", f"{zoo}attn.{name}", bias=qkv_bias)
            rules += linear(f"{hf}self_attn.o_proj", f"{zoo}attn.o_proj", bias=o_bias)
            if self.qk_norm:
                rules += [rename(f"{hf}self_attn.{n}.weight", f"{zoo}attn.qk_norm.{n}.weight") for n in ("q_norm", "k_norm")]
            rules += self.ffn_rules(c, hf, zoo, bias=mlp_bias)
            rules += [rename(f"{hf}{name}.weight", f"{zoo}norms.{j}.weight") for j, name in enumerate(self.block_norms)]
        return rules

    def ffn_rules(self, c: dict, hf: str, zoo: str, *, bias: bool) -> list[Rule]:
        """The FFN of the layer whose names start with ``hf`` / ``zoo``."""
        return [r for name in ("gate_proj", "up_proj", "down_proj") for r in linear(f"{hf}mlp.{name}", f"{zoo}ffn.{name}", bias=bias)]

    # -- export -----------------------------------------------------------------------------------

    def export_rope(self, m: DictConfig) -> dict:
        return rope_export(m, self.hf_class)

    def export_scale(self, m: DictConfig) -> dict:
        """The ``config.json`` keys of the score scale (Llama's is always ``head_dim ** -0.5``)."""
        expect(m, "attention.scale", m.attention.get("scale"), [None], self.hf_class)
        return {}

    def export_window(self, m: DictConfig) -> dict:
        expect(m, "attention.window", m.attention.get("window"), [None], self.hf_class)
        return {}

    def export_biases(self, m: DictConfig) -> dict:
        bias = bool(m.attention.get("bias", False))
        expect(m, "attention.qkv_bias", m.attention.get("qkv_bias"), [None, bias], self.hf_class)
        return {"attention_bias": bias, "mlp_bias": bool(m.ffn.get("bias", False))}

    def export_ffn(self, m: DictConfig) -> dict:
        hidden_dim = m.ffn.get("hidden_dim") or parameter_matched_hidden(m.dim)
        return {"hidden_act": glu_act(m.ffn, self.hf_class), "intermediate_size": hidden_dim}

    def export_config(self, m: DictConfig) -> dict:
        expect_slots(
            m, self.hf_class, arch="zoo.arch.CausalLM", norm="zoo.norm.RMSNorm", residual=self.residual[1],
            attention="zoo.attention.Attention",
        )
        qk_norm = m.attention.get("qk_norm")
        expect(m, "attention.qk_norm._target_", qk_norm and qk_norm.get("_target_"), [self.qk_norm and self.qk_norm[1]], self.hf_class)
        if qk_norm:
            expect(m, "attention.qk_norm.eps", float(qk_norm.get("eps", 1e-6)), [float(m.norm.get("eps", 1e-6))], self.hf_class)
        expect(m, "embed_norm", m.get("embed_norm", False), [False], self.hf_class)
        expect(m, "final_norm", m.get("final_norm"), [None, True], self.hf_class)
        n_heads = m.n_heads
        return {
            "vocab_size": m.vocab_size,
            "hidden_size": m.dim,
            "num_hidden_layers": m.n_layers,
            "num_attention_heads": n_heads,
            "num_key_value_heads": m.attention.get("n_kv_heads") or n_heads,
            "head_dim": m.get("head_dim") or m.dim // n_heads,
            "max_position_embeddings": m.max_seq_len,
            "rms_norm_eps": float(m.norm.get("eps", 1e-6)),
            **self.export_rope(m),
            **self.export_ffn(m),
            **self.export_biases(m),
            **self.export_window(m),
            **self.export_scale(m),
        }
