"""Attention: the ``model/attention`` slot (MHA, MQA, GQA, sliding window, QK-norm, latent, differential, and the
recurrent mixers retention and selective SSM), its kernels and caches."""

from zoo.attention.attention import Attention, Context, CrossAttention
from zoo.attention.cache import KVCache, LayerCache
from zoo.attention.differential import DifferentialAttention
from zoo.attention.kernels import KERNELS, eager, sdpa
from zoo.attention.mask import Mask
from zoo.attention.mla import MultiHeadLatentAttention
from zoo.attention.qk_norm import QKNorm, QKNormAcrossHeads
from zoo.attention.retention import Retention
from zoo.attention.ssm import SelectiveSSM
from zoo.attention.state_cache import StateCache

__all__ = ["Attention", "CrossAttention", "DifferentialAttention", "Context", "Mask", "MultiHeadLatentAttention", "QKNorm", "QKNormAcrossHeads", "Retention", "SelectiveSSM", "StateCache", "KVCache", "LayerCache", "KERNELS", "eager", "sdpa"]
