"""Small models built by hand for the generation tests (``from tiny_models import tiny``)."""

import copy as copying
from functools import partial

import torch

from zoo.arch import CausalLM, EncoderDecoder, EncoderLM, PrefixLM
from zoo.attention import Attention, CrossAttention
from zoo.ffn import SwiGLU
from zoo.init import NormalInit
from zoo.norm import RMSNorm
from zoo.pos import RoPE
from zoo.residual import PreNorm

VOCAB = 40
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
ARCHS = {"causal": CausalLM, "prefix": PrefixLM, "encdec": EncoderDecoder, "encoder": EncoderLM}


def tiny(arch="causal", *, pos=RoPE, seed=0, n_layers=2, dim=32, window=None, n_kv_heads=2, std=0.3, vocab=VOCAB, max_seq_len=128):
    """A small model built by hand; a large init ``std`` makes its distributions peaked (fewer near-ties)."""
    kwargs = dict(
        vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=4, max_seq_len=max_seq_len,
        attention=partial(Attention, n_kv_heads=n_kv_heads, window=window), ffn=partial(SwiGLU), norm=partial(RMSNorm),
        residual=partial(PreNorm), pos=pos, init=NormalInit(std=std),
    )
    if arch == "encdec":
        kwargs["cross_attention"] = partial(CrossAttention, n_kv_heads=2)
    torch.manual_seed(seed)
    return ARCHS[arch](**kwargs).eval()


def perturbed(model, *, scale: float, seed: int = 1):
    """A copy of ``model`` with noise on every weight: a draft that agrees with it only sometimes."""
    copy = copying.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std())
    return copy
