"""Feed-forward networks: the ``model/ffn`` slot.

Every FFN is built per layer as ``ffn(dim)`` and maps ``(b, n, dim) -> (b, n, dim)``.
The mixture of experts (:mod:`zoo.ffn.moe`) wraps any of them.
"""

from zoo.ffn.glu import GLU, GeGLU, ReGLU, SwiGLU
from zoo.ffn.mlp import MLP, GeLUMLP, ReLUMLP, SquaredReLUMLP
from zoo.ffn.moe import MoE

__all__ = ["MLP", "ReLUMLP", "SquaredReLUMLP", "GeLUMLP", "GLU", "SwiGLU", "GeGLU", "ReGLU", "MoE"]
