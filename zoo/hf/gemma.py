"""Gemma (Gemma Team 2024, arXiv:2403.08295), Gemma 2 (arXiv:2408.00118) and Gemma 3 text (arXiv:2503.19786).

Gemma is Llama's block and names with token embeddings times ``sqrt(dim)`` (``model.scale_embed``),
a gated FFN by ``hidden_act`` (GeGLU with tanh GeLU; the legacy ``gelu`` of the released configs
means the tanh form, as transformers reads it), a tied head and ``head_dim`` (256) apart from
``hidden_size / num_attention_heads``; the 2B model has one KV head (``model/attention=mqa``).

Gemma 2 and 3 keep Llama's tensor names with a different block. Composition: token embeddings times ``sqrt(dim)``
(``model.scale_embed``); a norm before and after each sub-layer (``model/residual=sandwich``:
``input_layernorm``, ``post_attention_layernorm``, ``pre_feedforward_layernorm``,
``post_feedforward_layernorm``); a gated FFN by ``hidden_activation`` (GeGLU with tanh GeLU);
scores scaled by ``query_pre_attn_scalar ** -0.5`` (``model.attention.scale``); sliding-window and
global layers as ``layer_types`` lists them (``model/layers``: kind ``local`` with the window, kind
``global``); a tied head. Gemma 2 soft-caps the attention scores (``model/attention=softcap``) and
the final logits (``model.logit_softcap``). Gemma 3 normalises each head's queries and keys
(``model/attention=qk_norm``) and gives its local layers their own RoPE (``rope_parameters`` per
layer type: ``model.layers.kinds.local.pos``).

Every Gemma's RMSNorm multiplies by ``1 + weight``. Its weights are converted (``+1`` on import, ``-1`` on
export) so zoo's RMSNorm serves: transformers computes ``1 + weight`` in float32 at every call, which
is the very number stored, so the import is exact.
"""

from omegaconf import DictConfig, OmegaConf

from zoo.errors import ConfigError
from zoo.hf.family import Rule, attention_option, expect, ffn_overrides, fmt, layer_kinds, rope_parameters
from zoo.hf.llama import Llama, glu_act
from zoo.hf.rope import rope_export, rope_overrides

#: ``layer_types`` entries -> the kinds of ``model/layers=local_global_*``
KINDS = {"sliding_attention": "local", "full_attention": "global"}
LAYER_TYPES = {kind: layer_type for layer_type, kind in KINDS.items()}
LOCAL_POS = "model.layers.kinds.local.pos"


def _plus_one(w):
    return (w + 1,)


def _minus_one(w):
    return (w - 1,)


def unit_offset(rule: Rule) -> Rule:
    """``rule`` for a Gemma norm weight: transformers' ``w`` is zoo's ``1 + w``."""
    return Rule(rule.hf, rule.zoo, _plus_one, _minus_one)


def period(kinds: list[str]) -> list[str]:
    """The shortest pattern that, cycled, gives ``kinds`` (``model.layers.pattern``)."""
    return next(kinds[:p] for p in range(1, len(kinds) + 1) if all(k == kinds[i % p] for i, k in enumerate(kinds)))


class Gemma(Llama):
    """``GemmaForCausalLM``: Llama's names and block, ``1 + weight`` norms, scaled embeddings, a tied head."""

    model_types = ("gemma",)
    hf_class = "GemmaForCausalLM"
    tie_default = True
    buffers = ("inv_freq",)
    features = frozenset({"scale_embed"})
    #: ``hidden_activation``: transformers 4.x's key for the FFN activation (absent: tanh GeLU)
    known_keys = (Llama.known_keys - {"mlp_bias", "pretraining_tp"}) | {"hidden_activation"}
    #: transformers' values of the keys a config may leave out, where they differ from Llama's
    defaults = dict(num_attention_heads=16, num_key_value_heads=16, head_dim=256, hidden_act="gelu_pytorch_tanh", max_position_embeddings=8192)

    def filled(self, c: dict) -> dict:
        """``c`` with transformers' defaults for the keys it leaves out."""
        return {**self.defaults, **c}

    def activation(self, c: dict) -> tuple[str, str]:
        """``(config key, activation)`` of the gated FFN.

        The released Gemma configs say ``hidden_act: gelu`` yet mean the tanh approximation: transformers
        5 reads ``gelu`` as ``gelu_pytorch_tanh``, and 4.x read ``hidden_activation`` instead (tanh when
        absent). Both readings agree on every released config; a config on which they differ is refused.
        """
        act = c["hidden_act"]
        act = "gelu_pytorch_tanh" if act == "gelu" else act
        old = c.get("hidden_activation") or "gelu_pytorch_tanh"
        if old != act:
            raise ConfigError(
                "hf_config.hidden_activation", c.get("hidden_activation"),
                f"the same activation as hidden_act={c['hidden_act']!r} (transformers 4.x read one, 5.x the other)",
            )  # fmt: skip
        return "hidden_act", act

    # -- import -----------------------------------------------------------------------------------

    def overrides(self, c: dict) -> list[str]:
        return [*super().overrides(self.filled(c)), "model.scale_embed=true"]

    def sizes(self, c: dict) -> tuple[int, int, int]:
        c = self.filled(c)
        return c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]

    def biases(self, c: dict) -> tuple[bool, bool, bool]:
        bias = bool(c.get("attention_bias", False))
        return bias, bias, False

    def ffn_settings(self, c: dict, *, bias: bool) -> list[str]:
        key, act = self.activation(self.filled(c))
        return ffn_overrides(key, act, gated=True, hidden_dim=c["intermediate_size"], bias=bias)

    def rules(self, c: dict) -> list[Rule]:
        return [unit_offset(r) if r.hf[0].endswith("norm.weight") else r for r in super().rules(self.filled(c))]

    # -- export -----------------------------------------------------------------------------------

    def export_config(self, m: DictConfig) -> dict:
        expect(m, "scale_embed", bool(m.get("scale_embed", False)), [True], self.hf_class)
        return super().export_config(m)

    def export_ffn(self, m: DictConfig) -> dict:
        act = glu_act(m.ffn, self.hf_class)
        if act == "gelu":  # transformers reads it as the tanh approximation
            raise ConfigError("model.ffn.approximate", m.ffn.get("approximate", "none"), f"{self.hf_class}'s GeGLU is tanh: model.ffn.approximate=tanh")
        return {"hidden_act": act, "intermediate_size": super().export_ffn(m)["intermediate_size"]}

    def export_biases(self, m: DictConfig) -> dict:
        bias = bool(m.attention.get("bias", False))
        expect(m, "attention.qkv_bias", m.attention.get("qkv_bias"), [None, bias], self.hf_class)
        expect(m, "ffn.bias", bool(m.ffn.get("bias", False)), [False], self.hf_class)
        return {"attention_bias": bias}


class Gemma2(Gemma):
    """``Gemma2ForCausalLM``: Gemma's names, four norms per layer, soft-capped scores and logits."""

    model_types = ("gemma2",)
    hf_class = "Gemma2ForCausalLM"
    residual = ("sandwich", "zoo.residual.SandwichNorm")
    block_norms = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")
    features = frozenset({"scale_embed", "logit_softcap", "attention.softcap"})
    known_keys = Gemma.known_keys | {
        "query_pre_attn_scalar", "sliding_window", "layer_types", "final_logit_softcapping",
        "attn_logit_softcapping", "cache_implementation",
    }  # fmt: skip
    #: transformers' values of the keys a config may leave out, where they differ from Llama's (not Gemma's)
    defaults = dict(
        num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192,
        query_pre_attn_scalar=256, sliding_window=4096, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
    )  # fmt: skip

    def activation(self, c: dict) -> tuple[str, str]:
        return "hidden_activation", c["hidden_activation"]

    def period(self, c: dict) -> int:
        """Every this many layers, one is global, when ``layer_types`` is absent."""
        return 2

    def layer_kinds(self, c: dict) -> list[str]:
        """``local`` or ``global`` for each layer."""
        n = c["num_hidden_layers"]
        every = self.period(c)
        types = c.get("layer_types") or ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(n)]
        unknown = sorted(set(types) - set(KINDS))
        if unknown or len(types) != n:
            raise ConfigError("hf_config.layer_types", types, f"{n} entries, each one of {sorted(KINDS)}")
        return [KINDS[t] for t in types]

    def ropes(self, c: dict) -> dict[str, dict]:
        """The ``rope_parameters`` of each kind of layer: Gemma 2 has one RoPE for all."""
        params = rope_parameters(c)
        params.setdefault("rope_theta", c.get("rope_theta", 10000.0))  # 4.x spelling
        return {"local": params, "global": params}

    # -- import -----------------------------------------------------------------------------------

    def overrides(self, c: dict) -> list[str]:
        c = self.filled(c)
        _, _, head_dim = self.sizes(c)
        scalar = c["query_pre_attn_scalar"]
        final_cap = c["final_logit_softcapping"]
        return [
            *super().overrides(c),
            # transformers scales by scalar ** -0.5, with the same float arithmetic
            f"model.attention.scale={fmt(None if scalar == head_dim else scalar**-0.5)}",
            f"model.attention.softcap={fmt(self.score_cap(c))}",
            f"model.logit_softcap={fmt(None if final_cap is None else float(final_cap))}",
            *self.layer_overrides(c),
        ]

    def score_cap(self, c: dict) -> float | None:
        cap = c["attn_logit_softcapping"]
        return None if cap is None else float(cap)

    def attention(self, c: dict) -> str:
        if self.score_cap(c) is not None:
            return "softcap"
        n_heads, n_kv_heads, _ = self.sizes(c)
        return attention_option(n_heads, n_kv_heads, self.window(c))

    def window(self, c: dict) -> int | None:
        """The window of every layer when all are local; a mix sets it per kind (:meth:`layer_overrides`)."""
        kinds = set(self.layer_kinds(c))
        return c["sliding_window"] if kinds == {"local"} else None

    def rope(self, c: dict) -> list[str]:
        kinds = set(self.layer_kinds(c))
        return rope_overrides(self.rope_config(c, "global" if "global" in kinds else "local"))

    def rope_config(self, c: dict, kind: str) -> dict:
        """A config with one kind of layer's RoPE, as :func:`~zoo.hf.rope.rope_overrides` reads it."""
        return {"rope_parameters": self.ropes(c)[kind], "max_position_embeddings": c["max_position_embeddings"]}

    def layer_overrides(self, c: dict) -> list[str]:
        """``model/layers`` for a mix of local and global layers: the pattern, the window, the local RoPE."""
        kinds = self.layer_kinds(c)
        if len(set(kinds)) == 1:
            return []
        pattern = period(kinds)
        n_local = pattern.count("local")
        # the option that names the rhythm where there is one (Gemma 2's 1:1, Gemma 3's 5:1); the
        # pattern itself is always written, so any other mix rides on local_global_1to1 exactly
        rhythm = pattern == ["local"] * n_local + ["global"] and n_local in (1, 5)
        out = [
            f"model/layers=local_global_{n_local if rhythm else 1}to1",
            f"model.layers.pattern=[{','.join(pattern)}]",
            f"model.layers.kinds.local.attention.window={c['sliding_window']}",
        ]
        local_rope = rope_overrides(self.rope_config(c, "local"), package=LOCAL_POS)
        if rope_overrides(self.rope_config(c, "local")) != rope_overrides(self.rope_config(c, "global")):
            out += local_rope
        return out

    # -- export -----------------------------------------------------------------------------------

    #: the slots a kind of layer may override, and how
    kind_slots: frozenset[str] = frozenset({"attention"})

    def export_config(self, m: DictConfig) -> dict:
        cap = m.get("logit_softcap")
        return {**super().export_config(m), "final_logit_softcapping": None if cap is None else float(cap), **self.export_score_cap(m)}

    def export_score_cap(self, m: DictConfig) -> dict:
        cap = m.attention.get("softcap")
        return {"attn_logit_softcapping": None if cap is None else float(cap)}

    def export_scale(self, m: DictConfig) -> dict:
        head_dim = m.get("head_dim") or m.dim // m.n_heads
        scale = m.attention.get("scale")
        scalar = head_dim if scale is None else round(float(scale) ** -2)
        if scalar**-0.5 != (head_dim**-0.5 if scale is None else float(scale)):
            raise ConfigError("model.attention.scale", scale, f"{self.hf_class} scales scores by query_pre_attn_scalar ** -0.5, a whole number")
        return {"query_pre_attn_scalar": scalar}

    def export_ffn(self, m: DictConfig) -> dict:
        return {"hidden_activation": glu_act(m.ffn, self.hf_class), "intermediate_size": Llama.export_ffn(self, m)["intermediate_size"]}

    def export_window(self, m: DictConfig) -> dict:
        return {}  # per layer: export_layers

    def kind_overrides(self, m: DictConfig) -> dict[str, dict]:
        """Each kind of layer in use and its slot overrides, refusing those Gemma cannot express."""
        layers = m.get("layers")
        out = {}
        for kind in dict.fromkeys(layer_kinds(m)):
            overrides = {} if layers is None else OmegaConf.to_container(layers.kinds.get(kind) or {}, resolve=True)
            for slot, override in overrides.items():
                if slot not in self.kind_slots or (slot == "attention" and set(override) - {"window"}):
                    raise ConfigError(
                        f"model.layers.kinds.{kind}.{slot}", override, f"{self.hf_class} layers differ only in {self.differ}"
                    )
            out[kind] = overrides
        return out

    differ = "their attention window (model.layers.kinds.<kind>.attention.window)"

    def kind_windows(self, m: DictConfig) -> dict[str, int | None]:
        """The attention window of each kind of layer in use."""
        base = m.attention.get("window")
        return {kind: o.get("attention", {}).get("window", base) for kind, o in self.kind_overrides(m).items()}

    def export_layers(self, m: DictConfig) -> dict:
        windows = self.kind_windows(m)
        sliding = sorted({w for w in windows.values() if w is not None})
        if len(sliding) > 1:
            raise ConfigError("model.layers.kinds", windows, f"{self.hf_class} has one sliding_window for every local layer")
        types = [LAYER_TYPES["global" if windows[k] is None else "local"] for k in layer_kinds(m)]
        return {"layer_types": types, "sliding_window": sliding[0] if sliding else None}


class Gemma3(Gemma2):
    """``Gemma3ForCausalLM`` (``Gemma3TextConfig``): Gemma 2's names plus ``self_attn.q_norm`` and ``k_norm``."""

    model_types = ("gemma3_text",)
    hf_class = "Gemma3ForCausalLM"
    qk_norm = ("qk_norm", "zoo.attention.QKNorm")
    features = frozenset({"scale_embed", "logit_softcap"})
    known_keys = Gemma2.known_keys | {"rope_local_base_freq", "sliding_window_pattern", "_sliding_window_pattern"}
    defaults = {
        **Gemma2.defaults, "max_position_embeddings": 131072, "final_logit_softcapping": None, "attn_logit_softcapping": None
    }  # fmt: skip
    kind_slots = frozenset({"attention", "pos"})
    differ = "their attention window and RoPE (model.layers.kinds.<kind>.attention.window, .pos)"

    def period(self, c: dict) -> int:
        # 4.x configs and transformers 5's own to_dict spell it differently
        return int(c.get("sliding_window_pattern", c.get("_sliding_window_pattern", 6)))

    def ropes(self, c: dict) -> dict[str, dict]:
        """Per layer type, as transformers 5 reads them: ``rope_parameters`` (one entry per type, or the
        4.x keys: ``rope_theta`` and ``rope_scaling`` for global layers, ``rope_local_base_freq`` for local ones)."""
        params = c.get("rope_parameters") or {}
        per_type = params if params and all(isinstance(v, dict) for v in params.values()) else {}
        full = dict(per_type.get("full_attention", params if not per_type else {}))
        full.setdefault("rope_theta", c.get("rope_theta", 1e6))
        local = dict(per_type.get("sliding_attention", {}))
        local.setdefault("rope_theta", c.get("rope_local_base_freq", 1e4))
        # transformers lays rope_scaling over the global layers' parameters
        global_rope = rope_parameters({"rope_parameters": full, "rope_scaling": c.get("rope_scaling")})
        return {"global": global_rope, "local": rope_parameters({"rope_parameters": local})}

    def score_cap(self, c: dict) -> float | None:
        if c["attn_logit_softcapping"] is not None:
            raise ConfigError(
                "hf_config.attn_logit_softcapping", c["attn_logit_softcapping"],
                "null: transformers' Gemma 3 ignores it, so zoo cannot tell which model is meant",
            )  # fmt: skip
        return None

    def attention(self, c: dict) -> str:
        return self.qk_norm[0]

    def export_score_cap(self, m: DictConfig) -> dict:
        return {"attn_logit_softcapping": None}

    def kind_pos(self, m: DictConfig, kind: str) -> DictConfig:
        """The position scheme of one kind of layer: its own option, or the model's with its settings."""
        override = self.kind_overrides(m)[kind].get("pos")
        if override is None:
            return m.pos
        return OmegaConf.create(override) if "_target_" in override else OmegaConf.merge(m.pos, override)

    def export_rope(self, m: DictConfig) -> dict:
        windows = self.kind_windows(m)
        by_type: dict[str, dict] = {}
        for kind, window in windows.items():
            layer_type = LAYER_TYPES["global" if window is None else "local"]
            node = OmegaConf.create({"pos": self.kind_pos(m, kind), "max_seq_len": m.max_seq_len})
            params = rope_export(node, self.hf_class)["rope_parameters"]
            if by_type.setdefault(layer_type, params) != params:
                raise ConfigError("model.layers.kinds", list(windows), f"{self.hf_class} has one RoPE per layer type ({layer_type})")
        for layer_type in LAYER_TYPES.values():  # a type no layer has still needs an entry
            by_type.setdefault(layer_type, rope_export(m, self.hf_class)["rope_parameters"])
        return {"rope_parameters": by_type}
