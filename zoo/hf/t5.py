"""T5 (Raffel et al. 2019, arXiv:1910.10683), v1.0 and v1.1, and mT5 (Xue et al. 2020, arXiv:2010.11934).

Composition: encoder-decoder, pre-norm RMSNorm (T5's "LayerNorm" subtracts no mean; eps 1e-6), no
biases, bucketed relative bias computed by each stack's first layer and shared by the others
(zoo's per-stack :class:`~zoo.pos.T5RelativeBias`), unscaled scores (``scale=1.0``: T5 folds
``head_dim ** -0.5`` into its init). v1.0 has a ReLU MLP and a tied head whose input is scaled by
``d_model ** -0.5`` (``logit_scale``); v1.1 and mT5 a GeGLU (``gated-gelu``, the tanh GeLU) and an
untied, unscaled head.
"""

from omegaconf import DictConfig

from zoo.errors import ConfigError
from zoo.ffn.glu import parameter_matched_hidden
from zoo.hf.family import Family, Rule, expect, expect_slots, ffn_overrides, fmt, rename, require

#: zoo FFN classes -> (``feed_forward_proj``, gated); GeGLU/GeLUMLP by their approximation
FFN_NAMES = {
    ("zoo.ffn.ReLUMLP", "none"): "relu",
    ("zoo.ffn.GeLUMLP", "none"): "gelu",
    ("zoo.ffn.GeGLU", "tanh"): "gated-gelu",
    ("zoo.ffn.ReGLU", "none"): "gated-relu",
    ("zoo.ffn.SwiGLU", "none"): "gated-silu",
}


def feed_forward(c: dict) -> tuple[str, bool]:
    """``(activation, gated)`` of ``feed_forward_proj`` as transformers reads it."""
    proj = c.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise ConfigError("hf_config.feed_forward_proj", proj, "'ACT' or 'gated-ACT'")
    # transformers runs "gated-gelu" with the tanh GeLU (gelu_new), as the original T5 v1.1 did
    return ("gelu_new" if proj == "gated-gelu" else parts[-1]), len(parts) == 2


class T5(Family):
    """``T5ForConditionalGeneration``: ``{encoder,decoder}.block.{i}.layer.{j}``; ``shared`` embedding."""

    model_types = ("t5", "mt5")
    hf_class = "T5ForConditionalGeneration"
    auto_class = "AutoModelForSeq2SeqLM"
    embed = "shared.weight"
    tie_default = True
    known_keys = frozenset(
        """vocab_size d_model d_kv d_ff num_layers num_decoder_layers num_heads relative_attention_num_buckets
        relative_attention_max_distance dropout_rate layer_norm_epsilon feed_forward_proj dense_act_fn is_gated_act
        is_encoder_decoder classifier_dropout tie_word_embeddings scale_decoder_outputs n_positions output_past
        is_decoder""".split()
    )

    def aliases(self, c: dict) -> dict[str, str]:
        return {"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight"}

    def n_layers(self, c: dict) -> tuple[int, int]:
        n = c.get("num_layers", 6)
        return n, c.get("num_decoder_layers") or n

    def overrides(self, c: dict) -> list[str]:
        require(c, "is_decoder", [False], default=False)
        act, gated = feed_forward(c)
        if c.get("dense_act_fn", act) != act:
            raise ConfigError("hf_config.dense_act_fn", c["dense_act_fn"], f"must agree with feed_forward_proj ({act})")
        dim = c.get("d_model", 512)
        n_layers, n_decoder_layers = self.n_layers(c)
        scaled = c.get("scale_decoder_outputs", c.get("tie_word_embeddings", True))
        return [
            "model=encdec",
            "model/norm=rmsnorm",
            "model/residual=pre",
            "model/pos=t5",
            "model/attention=mha",
            f"model.vocab_size={c.get('vocab_size', 32128)}",
            f"model.dim={dim}",
            f"model.n_layers={n_layers}",
            f"model.n_decoder_layers={n_decoder_layers}",
            f"model.n_heads={c.get('num_heads', 8)}",
            f"model.head_dim={c.get('d_kv', 64)}",
            f"model.max_seq_len={c.get('n_positions', 512)}",  # relative positions: no hard limit
            f"model.norm.eps={fmt(float(c.get('layer_norm_epsilon', 1e-6)))}",
            f"model.pos.n_buckets={c.get('relative_attention_num_buckets', 32)}",
            f"model.pos.max_distance={c.get('relative_attention_max_distance', 128)}",
            "model.attention.bias=false",
            "++model.attention.scale=1.0",
            "++model.cross_attention.scale=1.0",
            f"model.logit_scale={fmt(dim**-0.5 if scaled else 1.0)}",
            *ffn_overrides("feed_forward_proj", act, gated=gated, hidden_dim=c.get("d_ff", 2048), bias=False),
        ]

    def rules(self, c: dict) -> list[Rule]:
        act, gated = feed_forward(c)
        ffn = (("wi_0", "gate_proj"), ("wi_1", "up_proj"), ("wo", "down_proj")) if gated else (("wi", "up_proj"), ("wo", "down_proj"))
        rules = [rename("shared.weight", "embed.weight")]
        for stack, n in zip(("encoder", "decoder"), self.n_layers(c)):
            bias = "relative_attention_bias.weight"
            rules.append(rename(f"{stack}.block.0.layer.0.SelfAttention.{bias}", f"{stack}.pos.{bias}"))
            rules.append(rename(f"{stack}.final_layer_norm.weight", f"{stack}.norm.weight"))
            for i in range(n):
                hf, zoo = f"{stack}.block.{i}.layer.", f"{stack}.layers.{i}."
                sublayers = [("SelfAttention", "attn")] + ([("EncDecAttention", "cross_attn")] if stack == "decoder" else [])
                for j, (hf_attn, zoo_attn) in enumerate(sublayers):
                    rules += [rename(f"{hf}{j}.{hf_attn}.{p}.weight", f"{zoo}{zoo_attn}.{p}_proj.weight") for p in "qkvo"]
                    rules.append(rename(f"{hf}{j}.layer_norm.weight", f"{zoo}norms.{j}.weight"))
                j = len(sublayers)
                rules += [rename(f"{hf}{j}.DenseReluDense.{a}.weight", f"{zoo}ffn.{b}.weight") for a, b in ffn]
                rules.append(rename(f"{hf}{j}.layer_norm.weight", f"{zoo}norms.{j}.weight"))
        return rules

    def export_config(self, m: DictConfig) -> dict:
        expect_slots(
            m, self.hf_class, arch="zoo.arch.EncoderDecoder", norm="zoo.norm.RMSNorm", residual="zoo.residual.PreNorm",
            pos="zoo.pos.T5RelativeBias", attention="zoo.attention.Attention", cross_attention="zoo.attention.CrossAttention",
        )
        for key, actual, allowed in (
            ("final_norm", m.get("final_norm"), [None, True]),
            ("attention.n_kv_heads", m.attention.get("n_kv_heads"), [None, m.n_heads]),
            ("attention.window", m.attention.get("window"), [None]),
            ("attention.bias", bool(m.attention.get("bias", False)), [False]),
            ("attention.qkv_bias", m.attention.get("qkv_bias"), [None, False]),
            ("attention.scale", m.attention.get("scale"), [1.0]),
            ("cross_attention.scale", m.cross_attention.get("scale"), [1.0]),
            ("cross_attention.bias", bool(m.cross_attention.get("bias", False)), [False]),
            ("cross_attention.n_kv_heads", m.cross_attention.get("n_kv_heads"), [None, m.n_heads]),
            ("ffn.bias", bool(m.ffn.get("bias", False)), [False]),
            ("logit_scale", float(m.get("logit_scale", 1.0)), [1.0, m.dim**-0.5]),
        ):
            expect(m, key, actual, allowed, self.hf_class)
        proj = FFN_NAMES.get((m.ffn._target_, m.ffn.get("approximate", "none")))
        if proj is None:
            raise ConfigError("model.ffn._target_", m.ffn._target_, f"{self.hf_class} needs one of: relu, gelu, geglu (tanh), reglu, swiglu")
        dim, n_heads = m.dim, m.n_heads
        gated = proj.startswith("gated")
        default_hidden = parameter_matched_hidden(dim) if gated else 4 * dim
        return {
            "vocab_size": m.vocab_size,
            "d_model": dim,
            "d_kv": m.get("head_dim") or dim // n_heads,
            "d_ff": m.ffn.get("hidden_dim") or default_hidden,
            "num_layers": m.n_layers,
            "num_decoder_layers": m.get("n_decoder_layers") or m.n_layers,
            "num_heads": n_heads,
            "relative_attention_num_buckets": m.pos.get("n_buckets", 32),
            "relative_attention_max_distance": m.pos.get("max_distance", 128),
            "layer_norm_epsilon": float(m.norm.get("eps", 1e-6)),
            "feed_forward_proj": proj,
            "scale_decoder_outputs": float(m.get("logit_scale", 1.0)) != 1.0,
            "is_encoder_decoder": True,
            "decoder_start_token_id": 0,
            "pad_token_id": 0,
            "eos_token_id": 1,
        }
