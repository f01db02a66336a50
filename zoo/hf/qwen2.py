"""Qwen2 (Yang et al. 2024, arXiv:2407.10671): Llama's layout with biases on q, k and v only.

Its optional sliding window applies to the layers from ``max_window_layers`` on; zoo has one window
per model, so only an all-full or all-sliding configuration maps.
"""

from omegaconf import DictConfig

from zoo.hf.family import expect
from zoo.hf.llama import Llama
from zoo.hf.mistral import uniform_window


class Qwen2(Llama):
    """``Qwen2ForCausalLM``: ``q_proj``, ``k_proj``, ``v_proj`` with biases, ``o_proj`` and the MLP without."""

    model_types = ("qwen2",)
    hf_class = "Qwen2ForCausalLM"
    known_keys = Llama.known_keys | {"use_sliding_window", "sliding_window", "max_window_layers", "layer_types"}

    def window(self, c: dict) -> int | None:
        if c.get("layer_types"):
            return uniform_window(c, c.get("sliding_window"))
        if not c.get("use_sliding_window", False):
            return None
        # transformers 4.x configs: layers from max_window_layers on slide
        first_sliding = c.get("max_window_layers", 28)
        kinds = ["full_attention" if i < first_sliding else "sliding_attention" for i in range(c["num_hidden_layers"])]
        return uniform_window({"layer_types": kinds}, c.get("sliding_window", 4096))

    def biases(self, c: dict) -> tuple[bool, bool, bool]:
        return True, False, False

    def export_window(self, m: DictConfig) -> dict:
        window = m.attention.get("window")
        return {"use_sliding_window": window is not None, "sliding_window": window, "max_window_layers": 0}

    def export_biases(self, m: DictConfig) -> dict:
        expect(m, "attention.qkv_bias", m.attention.get("qkv_bias"), [True], self.hf_class)
        expect(m, "attention.bias", bool(m.attention.get("bias", False)), [False], self.hf_class)
        expect(m, "ffn.bias", bool(m.ffn.get("bias", False)), [False], self.hf_class)
        return {}
