"""Position schemes: the ``model/pos`` slot.

A scheme is built once per attention stack as ``pos(dim, n_heads=, head_dim=, max_seq_len=, causal=)``
and acts at one of three places, so that every scheme works with every attention kernel:

- ``embed``: added to the token embeddings (learned and sinusoidal absolute positions);
- ``rotate``: applied to queries and keys before the scores (RoPE);
- ``bias``: an additive score term of the query and key positions (ALiBi, T5), which the kernels
  accept as a dense tensor or evaluate block by block.

``learned_2d`` and ``rope_2d`` also take GLM's 2D positions ``(b, n, 2)`` (blank infilling).
"""

from zoo.pos.absolute import Learned2DPositions, LearnedPositions, SinusoidalPositions
from zoo.pos.alibi import ALiBi, alibi_slopes
from zoo.pos.base import NoPositions, Positions, split_2d
from zoo.pos.rope import RoPE, RoPE2D
from zoo.pos.rope_scaling import DynamicNTKRoPE, Llama3RoPE, LinearRoPE, YaRNRoPE
from zoo.pos.t5 import T5RelativeBias

__all__ = [
    "Positions",
    "NoPositions",
    "LearnedPositions",
    "Learned2DPositions",
    "SinusoidalPositions",
    "RoPE",
    "RoPE2D",
    "LinearRoPE",
    "DynamicNTKRoPE",
    "YaRNRoPE",
    "Llama3RoPE",
    "ALiBi",
    "alibi_slopes",
    "T5RelativeBias",
    "split_2d",
]
