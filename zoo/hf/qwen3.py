"""Qwen3 (Yang et al. 2025, arXiv:2505.09388): Qwen2's layout with QK-norm and no q/k/v biases.

Each head's queries and keys pass an RMSNorm (``self_attn.q_norm``, ``k_norm``, one weight of
``head_dim`` each) before RoPE: ``model/attention=qk_norm``. Its biases follow ``attention_bias`` as
in Llama, and its sliding window follows Qwen2's rules.
"""

from omegaconf import DictConfig

from zoo.hf.family import expect
from zoo.hf.llama import Llama
from zoo.hf.qwen2 import Qwen2


class Qwen3(Qwen2):
    """``Qwen3ForCausalLM``: Llama's names plus ``self_attn.q_norm`` and ``self_attn.k_norm``."""

    model_types = ("qwen3",)
    hf_class = "Qwen3ForCausalLM"
    qk_norm = ("qk_norm", "zoo.attention.QKNorm")

    def biases(self, c: dict) -> tuple[bool, bool, bool]:
        return Llama.biases(self, c)[:2] + (False,)

    def export_biases(self, m: DictConfig) -> dict:
        expect(m, "ffn.bias", bool(m.ffn.get("bias", False)), [False], self.hf_class)
        return {"attention_bias": Llama.export_biases(self, m)["attention_bias"]}
