"""Rotary embeddings of ``transformers`` configs, plain or scaled, to ``model/pos`` options and back.

``rope_type`` names the scaling: ``default`` is :class:`~zoo.pos.RoPE`; ``linear``, ``dynamic``,
``yarn`` and ``llama3`` the classes of :mod:`zoo.pos.rope_scaling`. Each scaling's keys map to the
class's arguments; a key outside that map (LongRoPE's factor lists, say) is refused, never dropped.
"""

from omegaconf import DictConfig

from zoo.errors import ConfigError
from zoo.hf.family import expect, fmt, rope_parameters, target
from zoo.pos.rope_scaling import yarn_temperature

#: rope_type -> (model/pos option, zoo class, {hf key: zoo argument}) for the keys beyond theta and fraction
SCALINGS = {
    "default": ("rope", "zoo.pos.RoPE", {}),
    "linear": ("rope_linear", "zoo.pos.LinearRoPE", {"factor": "factor"}),
    # transformers grows the base past max_position_embeddings, zoo past original_max_seq_len: left null
    "dynamic": ("rope_dynamic", "zoo.pos.DynamicNTKRoPE", {"factor": "factor"}),
    "yarn": (
        "rope_yarn",
        "zoo.pos.YaRNRoPE",
        {
            "factor": "factor",
            "original_max_position_embeddings": "original_max_seq_len",
            "beta_fast": "beta_fast",
            "beta_slow": "beta_slow",
            "attention_factor": "attention_factor",
            "truncate": "truncate",
        },
    ),
    "llama3": (
        "rope_llama3",
        "zoo.pos.Llama3RoPE",
        {
            "factor": "factor",
            "low_freq_factor": "low_freq_factor",
            "high_freq_factor": "high_freq_factor",
            "original_max_position_embeddings": "original_max_seq_len",
        },
    ),
}

#: keys of every rope_parameters dict that :func:`rope_overrides` reads itself
COMMON_KEYS = {"rope_type", "rope_theta", "partial_rotary_factor"}


def yarn_attention_factor(params: dict, factor: float) -> float:
    """The cos/sin multiplier a YaRN config asks for: given, or from ``mscale`` / ``mscale_all_dim`` as
    DeepSeek's configs spell it, or :func:`~zoo.pos.rope_scaling.yarn_temperature`."""
    if params.get("attention_factor") is not None:
        return float(params["attention_factor"])
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return yarn_temperature(factor, mscale) / yarn_temperature(factor, mscale_all_dim)
    return yarn_temperature(factor)


def rope_overrides(c: dict, *, theta: float = 10000.0, fraction: float = 1.0, package: str = "model.pos") -> list[str]:
    """``model/pos`` and its settings for config ``c``'s rotary embedding (``theta``, ``fraction``:
    the family's defaults when ``c`` has neither), placed at ``package`` (a kind of layer's own
    position scheme: ``model.layers.kinds.local.pos``)."""
    params = rope_parameters(c)
    kind = params["rope_type"]
    if kind not in SCALINGS:
        raise ConfigError("hf_config.rope_parameters.rope_type", kind, f"zoo reads RoPE of type {sorted(SCALINGS)}")
    option, _, keys = SCALINGS[kind]
    extra = set(keys)
    if kind == "yarn":
        params = dict(params)
        if params.get("factor") is None:  # DeepSeek-V3 leaves it to the two lengths
            params["factor"] = c["max_position_embeddings"] / params["original_max_position_embeddings"]
        params["attention_factor"] = yarn_attention_factor(params, float(params["factor"]))
        extra |= {"mscale", "mscale_all_dim"}
    unknown = sorted(k for k, v in params.items() if v is not None and k not in COMMON_KEYS | extra)
    if unknown:
        raise ConfigError(f"hf_config.rope_parameters.{unknown[0]}", params[unknown[0]], f"zoo's {kind} RoPE reads only {sorted(keys)}")
    theta = float(params.get("rope_theta", c.get("rope_theta", theta)))
    fraction = float(params.get("partial_rotary_factor", c.get("partial_rotary_factor", fraction)))
    group = "model/pos" if package == "model.pos" else f"+model/pos@{package}"
    out = [f"{group}={option}", f"{package}.theta={fmt(theta)}", f"{package}.fraction={fmt(fraction)}"]
    return out + [f"{package}.{zoo}={fmt(params[hf])}" for hf, zoo in keys.items() if params.get(hf) is not None]


def rope_export(m: DictConfig, family: str) -> dict:
    """The ``config.json`` keys of model config ``m``'s RoPE (``rope_parameters``, and 4.x's spelling)."""
    kinds = {cls: kind for kind, (_, cls, _) in SCALINGS.items()}
    kind = kinds.get(target(m, "pos"))
    expect(m, "pos._target_", target(m, "pos"), list(kinds), family)
    expect(m, "pos.fraction", float(m.pos.get("fraction", 1.0)), [1.0], family)
    theta = float(m.pos.get("theta", 10000.0))
    params = {"rope_type": kind, "rope_theta": theta}
    for hf, zoo in SCALINGS[kind][2].items():
        params[hf] = m.pos.get(zoo)
    if "original_max_position_embeddings" in params and params["original_max_position_embeddings"] is None:
        params["original_max_position_embeddings"] = m.max_seq_len
    if kind == "dynamic":
        expect(m, "pos.original_max_seq_len", m.pos.get("original_max_seq_len"), [None, m.max_seq_len], family)
    if kind == "yarn" and params["attention_factor"] is None:
        params["attention_factor"] = yarn_temperature(float(params["factor"]))
    params = {k: (float(v) if isinstance(v, float) else v) for k, v in params.items()}
    out = {"rope_parameters": params, "rope_theta": theta}  # 5.x reads rope_parameters, 4.x rope_theta ...
    if kind != "default":
        out["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}  # ... and rope_scaling
    return out
