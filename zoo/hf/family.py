"""What every Hugging Face family mapping shares: weight rules, config checks and override spelling.

A :class:`Family` says three things about one ``transformers`` model family:

- ``overrides(config)``: the zoo composition, as Hydra overrides, of a checkpoint's ``config.json``;
- ``rules(config)``: how its tensors map onto the composed model's ``state_dict`` names, as
  :class:`Rule` s that run both ways (import and export);
- ``export_config(model_cfg)``: the ``config.json`` of a zoo composition of this family, or a
  :class:`~zoo.errors.ConfigError` saying why the composition is not one.

Every tensor of a checkpoint must be used by a rule and every entry of the zoo model's state dict
filled, so nothing is silently dropped or left at its random init.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from zoo.errors import ConfigError

Tensors = tuple[torch.Tensor, ...]


def _same(*tensors: torch.Tensor) -> Tensors:
    return tensors


@dataclass(frozen=True)
class Rule:
    """Tensors ``hf`` of a checkpoint become tensors ``zoo`` of a zoo model, and back.

    Args:
        hf: checkpoint names, in the order ``to_zoo`` takes them.
        zoo: zoo state-dict names, in the order ``to_zoo`` returns them.
        to_zoo: ``(*hf tensors) -> (*zoo tensors)``; identity by default.
        to_hf: the inverse, ``(*zoo tensors) -> (*hf tensors)``.
    """

    hf: tuple[str, ...]
    zoo: tuple[str, ...]
    to_zoo: Callable[..., Tensors] = _same
    to_hf: Callable[..., Tensors] = _same


def rename(hf: str, zoo: str) -> Rule:
    """One tensor under another name."""
    return Rule((hf,), (zoo,))


def _t(w: torch.Tensor) -> Tensors:
    return (w.t(),)


def transposed(hf: str, zoo: str) -> Rule:
    """One matrix stored as ``(in, out)`` (GPT-2's ``Conv1D``) where ``nn.Linear`` keeps ``(out, in)``."""
    return Rule((hf,), (zoo,), _t, _t)


def linear(hf: str, zoo: str, *, bias: bool) -> list[Rule]:
    """A linear layer's weight, and its bias when it has one."""
    rules = [rename(f"{hf}.weight", f"{zoo}.weight")]
    return rules + [rename(f"{hf}.bias", f"{zoo}.bias")] if bias else rules


#: keys of ``PretrainedConfig`` (transformers 4.x and 5.x) that carry no architecture: ids, generation
#: defaults, bookkeeping. A family's own keys are checked by the family.
GENERIC_KEYS = frozenset(
    """
    _name_or_path _commit_hash _attn_implementation_autoset architectures transformers_version model_type dtype
    torch_dtype use_bfloat16 id2label label2id num_labels problem_type finetuning_task tokenizer_class prefix
    task_specific_params output_attentions output_hidden_states output_scores return_dict return_dict_in_generate
    torchscript tf_legacy_loss chunk_size_feed_forward use_cache initializer_range initializer_factor
    bos_token_id eos_token_id pad_token_id sep_token_id decoder_start_token_id gradient_checkpointing
    max_length min_length do_sample early_stopping num_beams num_beam_groups diversity_penalty temperature top_k
    top_p typical_p repetition_penalty length_penalty no_repeat_ngram_size encoder_no_repeat_ngram_size
    bad_words_ids num_return_sequences forced_bos_token_id forced_eos_token_id remove_invalid_values
    exponential_decay_length_penalty suppress_tokens begin_suppress_tokens unk_token_id
    """.split()
)


class Family:
    """The mapping between one ``transformers`` model family and a zoo composition.

    Class attributes:
        model_types: the ``model_type`` values of ``config.json`` it reads.
        hf_class: the ``transformers`` class written to ``config.json`` on export.
        auto_class: the ``transformers`` auto class that loads it (for the parity check).
        base_prefix: the prefix of the base model's tensors (``model.``); checkpoints saved from the
            bare base model lack it, and get it added.
        head: the checkpoint name of the LM head.
        embed: the checkpoint name of the token embedding (a tied head equals it).
        tie_default: ``tie_word_embeddings`` when ``config.json`` leaves it out.
        buffers: name suffixes of checkpoint tensors that are not weights (cached masks, RoPE tables).
        known_keys: config keys the mapping reads or knows to be irrelevant (dropout rates).
        features: the :data:`FEATURES` its export writes; a composition using any other is refused.
    """

    model_types: tuple[str, ...] = ()
    hf_class: str = ""
    auto_class: str = "AutoModelForCausalLM"
    base_prefix: str = ""
    head: str = "lm_head.weight"
    embed: str = ""
    tie_default: bool = False
    buffers: tuple[str, ...] = ()
    known_keys: frozenset[str] = frozenset()
    features: frozenset[str] = frozenset()

    def overrides(self, c: dict) -> list[str]:
        """The zoo composition of config ``c``, as Hydra overrides (without ``model.tie_embeddings``)."""
        raise NotImplementedError

    def rules(self, c: dict) -> list[Rule]:
        """Weight rules for config ``c``, without the LM head (the caller adds it when untied)."""
        raise NotImplementedError

    def export_config(self, m: DictConfig) -> dict:
        """The ``config.json`` keys of model config ``m`` (``cfg.model``), without ``tie_word_embeddings``."""
        raise ConfigError("model", m.get("_target_"), f"zoo cannot export to {self.hf_class} yet")

    def export_layers(self, m: DictConfig) -> dict:
        """The ``config.json`` keys of ``m``'s per-layer pattern (``model.layers``); a family whose layers
        are all alike refuses any pattern whose kinds differ."""
        expect_uniform_layers(m, self.hf_class)
        return {}

    def canonical(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The checkpoint layout the rules name, from any other layout of the same family."""
        return weights

    def skipped(self, c: dict, name: str) -> bool:
        """Whether checkpoint tensor ``name`` belongs to a part ``transformers``' model skips too
        (DeepSeek-V3's multi-token-prediction layer), so it is left out rather than refused."""
        return False

    def aliases(self, c: dict) -> dict[str, str]:
        """``{checkpoint name: name it must equal}`` of tensors stored twice (T5's per-stack embeddings)."""
        return {}

    def check(self, c: dict) -> None:
        """Refuse config keys this mapping does not know, unless they are off (falsy) or mere metadata.

        A key zoo does not understand may change the model; building without it would give a
        silently different model, so it is an error. A key that ``transformers``' own config class
        lacks is metadata its modeling code never reads (SmolLM's ``is_llama_config``); telling the
        two apart needs ``transformers``, without which every unknown key is refused.
        """
        unknown = sorted(k for k, v in c.items() if v and k not in GENERIC_KEYS and k not in self.known_keys)
        fields = transformers_fields(str(c.get("model_type"))) if unknown else None
        if fields is not None:
            unknown = [k for k in unknown if k in fields]
        if unknown:
            unknown = [k for k in unknown if k not in implied_keys(c, unknown)]
        if unknown:
            hint = "" if fields is not None else " (if it is metadata transformers ignores, install transformers so zoo can tell)"
            raise ConfigError(
                f"hf_config.{unknown[0]}",
                c[unknown[0]],
                f"zoo's {self.hf_class} mapping does not know this setting ({', '.join(unknown)}), so it cannot promise the same model{hint}",
            )


def transformers_fields(model_type: str) -> set[str] | None:
    """The keys of ``transformers``' config class for ``model_type``, or ``None`` without transformers."""
    try:
        from transformers import CONFIG_MAPPING
    except ImportError:
        return None
    if model_type not in CONFIG_MAPPING:
        return None
    config = CONFIG_MAPPING[model_type]()
    return set(config.to_dict()) | set(getattr(config, "attribute_map", {}))


def implied_keys(c: dict, keys: list[str]) -> set[str]:
    """Those of ``keys`` whose value ``transformers`` would give anyway from the rest of config ``c``.

    Such a key adds nothing a config without it lacks (transformers 5.25's Falcon writes the KV head
    count it derives from ``multi_query`` and ``num_kv_heads``), so a new release that writes one more
    derived key does not make zoo refuse the checkpoints it writes.
    """
    try:
        from transformers import CONFIG_MAPPING

        rest = {k: v for k, v in c.items() if k not in keys and k not in ("model_type", "transformers_version")}
        config = CONFIG_MAPPING[str(c.get("model_type"))](**rest)
    except Exception:  # noqa: BLE001 - no transformers, or a config it cannot build: nothing is implied
        return set()
    return {k for k in keys if getattr(config, k, object()) == c[k]}


# -- reading configs -------------------------------------------------------------------------------


def require(c: dict, key: str, allowed: Iterable, *, default=None) -> None:
    """Refuse ``c[key]`` (or ``default`` when absent) unless it is in ``allowed``."""
    value = c.get(key, default)
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"hf_config.{key}", value, f"zoo supports only {allowed} here")


def rope_parameters(c: dict) -> dict:
    """A config's rotary settings as one dict with ``rope_type`` (``default`` when unscaled).

    transformers 5 keeps them in ``rope_parameters`` (possibly one entry per layer type); 4.x in
    ``rope_theta`` and ``rope_scaling`` (whose ``type`` is the older spelling of ``rope_type``).
    """
    params = dict(c.get("rope_parameters") or {})
    if params and all(isinstance(v, dict) for v in params.values()):  # one entry per layer type
        distinct = {repr(sorted(v.items())) for v in params.values()}
        if len(distinct) > 1:
            raise ConfigError("hf_config.rope_parameters", params, "zoo uses one RoPE for every layer")
        params = dict(next(iter(params.values())))
    scaling = dict(c.get("rope_scaling") or {})
    kind = scaling.pop("rope_type", scaling.pop("type", None)) or params.get("rope_type", params.get("type")) or "default"
    params.pop("type", None)
    return {**params, **scaling, "rope_type": kind}


def rope_settings(c: dict, *, theta: float = 10000.0, fraction: float = 1.0) -> tuple[float, float]:
    """``(theta, fraction)`` of a config's unscaled rotary embedding; scaled RoPE is an error here.

    ``theta`` and ``fraction`` are the family's defaults when the config has neither. Families that
    import scaled RoPE use :func:`zoo.hf.rope.rope_overrides` instead.
    """
    params = rope_parameters(c)
    if params["rope_type"] != "default":
        raise ConfigError(
            "hf_config.rope_parameters.rope_type", params["rope_type"], "this family's mapping reads only the plain rotation ('default')"
        )
    theta = params.get("rope_theta", c.get("rope_theta", theta))
    fraction = params.get("partial_rotary_factor", c.get("partial_rotary_factor", fraction))
    return float(theta), float(fraction)


#: activations of two-matrix MLPs: hf name -> (model/ffn option, GeLU approximation)
MLP_ACTS = {
    "gelu": ("gelu", "none"),
    "gelu_new": ("gelu", "tanh"),
    "gelu_pytorch_tanh": ("gelu", "tanh"),
    "gelu_fast": ("gelu", "tanh"),
    "relu": ("relu", None),
    "relu2": ("relu2", None),
}
#: activations of gated FFNs: hf name -> (model/ffn option, GeLU approximation)
GLU_ACTS = {
    "silu": ("swiglu", None),
    "swish": ("swiglu", None),
    "gelu": ("geglu", "none"),
    "gelu_new": ("geglu", "tanh"),
    "gelu_pytorch_tanh": ("geglu", "tanh"),
    "relu": ("reglu", None),
}


def ffn_overrides(key: str, act: str, *, gated: bool, hidden_dim: int, bias: bool) -> list[str]:
    """``model/ffn`` and its settings for activation ``act`` (the value of config key ``key``)."""
    table = GLU_ACTS if gated else MLP_ACTS
    if act not in table:
        raise ConfigError(f"hf_config.{key}", act, f"zoo has {'gated' if gated else 'two-matrix'} FFNs with: {sorted(table)}")
    option, approximate = table[act]
    out = [f"model/ffn={option}", f"model.ffn.hidden_dim={hidden_dim}", f"model.ffn.bias={fmt(bias)}"]
    return out + ([f"++model.ffn.approximate={approximate}"] if approximate else [])


def attention_option(n_heads: int, n_kv_heads: int, window: int | None) -> str:
    """The ``model/attention`` option whose name says what the checkpoint uses."""
    if window is not None:
        return "sliding_window"
    return "mha" if n_kv_heads == n_heads else "mqa" if n_kv_heads == 1 else "gqa"


def fmt(value) -> str:
    """A Python value as Hydra's override grammar reads it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


# -- reading compositions (export) -----------------------------------------------------------------


def target(m: DictConfig, slot: str | None = None) -> str:
    """The ``_target_`` of model config ``m`` or of one of its slots."""
    node = m if slot is None else m.get(slot)
    return "" if node is None else str(node.get("_target_", ""))


def expect(m: DictConfig, key: str, actual, allowed: Iterable, family: str) -> None:
    """Refuse to export unless ``actual`` (the value at ``key``) is one of ``allowed``."""
    allowed = list(allowed)
    if actual not in allowed:
        raise ConfigError(f"model.{key}", actual, f"{family} needs one of {allowed}")


def layer_kinds(m: DictConfig, key: str = "layers") -> list[str]:
    """The kind of each of ``m.n_layers`` layers, as ``model.layers`` cycles them (``same`` without a
    pattern); ``key="decoder_layers"``: an encoder-decoder's ``m.n_decoder_layers`` decoder layers."""
    layers = m.get(key)
    pattern = list(layers.pattern) if layers is not None else ["same"]
    n = m.n_layers if key == "layers" else (m.get("n_decoder_layers") or m.n_layers)
    return [str(pattern[i % len(pattern)]) for i in range(int(n))]


def expect_uniform_layers(m: DictConfig, family: str) -> None:
    """Refuse to export a composition whose layers differ (a ``model/layers`` pattern that overrides a
    slot), in any stack: ``model.layers``, and an encoder-decoder's ``model.decoder_layers``."""
    for key in ("layers", "decoder_layers"):
        layers = m.get(key)
        if layers is None:
            continue
        if any(layers.kinds.get(k) for k in layer_kinds(m, key)):
            option = "model/layers=uniform" if key == "layers" else "model.decoder_layers null (model/layers@model.decoder_layers=null)"
            raise ConfigError(f"model.{key}.pattern", list(layers.pattern), f"{family} builds every layer alike: {option}")


#: settings of a composition that only some families carry: a family that does not list one in
#: :attr:`Family.features` would drop it on export, so it refuses it instead (off: null or false);
#: no family carries a sparse attention pattern (strided, fixed, BigBird) or attention sinks (zoo has no
#: gpt-oss family): each refuses them
FEATURES = ("scale_embed", "logit_softcap", "attention.softcap", "attention.pattern", "attention.sinks")


def expect_features(m: DictConfig, family: Family) -> None:
    """Refuse to export a composition that uses a :data:`FEATURES` setting ``family`` does not write."""
    for key in FEATURES:
        value = OmegaConf.select(m, key)
        if value and key not in family.features:
            raise ConfigError(f"model.{key}", value, f"{family.hf_class} has no such setting: leave it off (null or false)")


def expect_slots(m: DictConfig, family: str, **targets: str) -> None:
    """Refuse to export unless each slot has the given ``_target_`` (``arch`` for the model itself)."""
    for slot, wanted in targets.items():
        actual = target(m, None if slot == "arch" else slot)
        expect(m, "_target_" if slot == "arch" else f"{slot}._target_", actual, [wanted], family)


def unfused_experts(prefix: str, part: str, w: torch.Tensor, *, gate: str, up: str, down: str) -> dict[str, torch.Tensor]:
    """One weight per expert from transformers' fused expert tensors: ``...gate_up_proj`` ``(E, 2h, d)``
    (the gate's rows, then the up projection's) or ``...down_proj`` ``(E, d, h)``, named
    ``<prefix><j>.<gate|up|down>.weight`` as the family's per-expert checkpoints name them."""
    if part.endswith("down_proj"):
        return {f"{prefix}{j}.{down}.weight": e for j, e in enumerate(w)}
    out = {}
    for j, e in enumerate(w):
        gate_w, up_w = e.chunk(2, dim=0)
        out |= {f"{prefix}{j}.{gate}.weight": gate_w, f"{prefix}{j}.{up}.weight": up_w}
    return out
