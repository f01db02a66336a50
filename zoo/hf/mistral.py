"""Mistral 7B (Jiang et al. 2023, arXiv:2310.06825): Llama's layout with sliding-window attention.

transformers masks a key unless ``q - sliding_window < k <= q`` (``sliding_window_overlay``), that is
``0 <= q - k < sliding_window``: exactly zoo's ``Mask`` with ``window = sliding_window``, so the
window maps one to one (no off-by-one).
"""

from omegaconf import DictConfig

from zoo.errors import ConfigError
from zoo.hf.family import expect
from zoo.hf.llama import Llama


def uniform_window(c: dict, window: int | None) -> int | None:
    """``window`` when every layer uses the same attention; zoo has one window per model."""
    kinds = set(c.get("layer_types") or [])
    if len(kinds) > 1:
        raise ConfigError("hf_config.layer_types", sorted(kinds), "zoo uses one attention kind for every layer, not a per-layer mix")
    if kinds == {"full_attention"}:
        return None
    return window


class Mistral(Llama):
    """``MistralForCausalLM``: Llama's names, no biases, ``sliding_window`` tokens (``null``: none)."""

    model_types = ("mistral",)
    hf_class = "MistralForCausalLM"
    known_keys = Llama.known_keys | {"sliding_window", "layer_types"}

    def window(self, c: dict) -> int | None:
        return uniform_window(c, c.get("sliding_window", 4096))

    def biases(self, c: dict) -> tuple[bool, bool, bool]:
        return False, False, False

    def export_window(self, m: DictConfig) -> dict:
        return {"sliding_window": m.attention.get("window")}

    def export_biases(self, m: DictConfig) -> dict:
        expect(m, "attention.bias", bool(m.attention.get("bias", False)), [False], self.hf_class)
        expect(m, "attention.qkv_bias", m.attention.get("qkv_bias"), [None, False], self.hf_class)
        expect(m, "ffn.bias", bool(m.ffn.get("bias", False)), [False], self.hf_class)
        return {}
