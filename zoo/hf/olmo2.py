"""OLMo 2 (OLMo et al. 2024, arXiv:2501.00656): Llama's layout with reordered norms and QK-norm.

A block adds ``norm(f(x))`` rather than ``f(norm(x))`` (``model/residual=reordered``; its norms are
``post_attention_layernorm`` and ``post_feedforward_layernorm``), and the queries and keys of all heads
pass one RMSNorm per projection (``self_attn.q_norm`` of ``n_heads * head_dim`` channels, ``k_norm``
of ``n_kv_heads * head_dim``) before RoPE: ``model/attention=qk_norm_across_heads``.
"""

from omegaconf import DictConfig

from zoo.hf.family import expect
from zoo.hf.llama import Llama


class Olmo2(Llama):
    """``Olmo2ForCausalLM``: no input norms; ``post_attention_layernorm``, ``post_feedforward_layernorm``."""

    model_types = ("olmo2",)
    hf_class = "Olmo2ForCausalLM"
    residual = ("reordered", "zoo.residual.ReorderedNorm")
    block_norms = ("post_attention_layernorm", "post_feedforward_layernorm")
    qk_norm = ("qk_norm_across_heads", "zoo.attention.QKNormAcrossHeads")
    known_keys = Llama.known_keys - {"mlp_bias", "pretraining_tp"}

    def biases(self, c: dict) -> tuple[bool, bool, bool]:
        return super().biases(c)[:2] + (False,)

    def export_biases(self, m: DictConfig) -> dict:
        expect(m, "ffn.bias", bool(m.ffn.get("bias", False)), [False], self.hf_class)
        return {"attention_bias": super().export_biases(m)["attention_bias"]}
