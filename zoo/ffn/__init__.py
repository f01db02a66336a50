"""Feed-forward networks: the ``model/ffn`` slot.

Every FFN is built per layer as ``ffn(dim)`` and maps ``(b, n, dim) -> (b, n, dim)``.
"""

from zoo.ffn.glu import GLU, GeGLU, ReGLU, SwiGLU
from zoo.ffn.mlp import MLP, GeLUMLP, ReLUMLP

__all__ = ["MLP", "ReLUMLP", "GeLUMLP", "GLU", "SwiGLU", "GeGLU", "ReGLU"]
