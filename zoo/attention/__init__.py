"""Attention: the ``model/attention`` slot (MHA, MQA, GQA, sliding window, QK-norm, latent, differential), its kernels and caches."""

from zoo.attention.attention import Attention, Context, CrossAttention
from zoo.attention.cache import KVCache, LayerCache
from zoo.attention.differential import DifferentialAttention
from zoo.attention.kernels import KERNELS, eager, sdpa
from zoo.attention.mask import Mask
from zoo.attention.mla import MultiHeadLatentAttention
from zoo.attention.qk_norm import QKNorm, QKNormAcrossHeads

__all__ = ["Attention", "CrossAttention", "DifferentialAttention", "Context", "Mask", "MultiHeadLatentAttention", "QKNorm", "QKNormAcrossHeads", "KVCache", "LayerCache", "KERNELS", "eager", "sdpa"]
