"""Architectures: the ``model`` config group (``causal``, ``prefix``, ``encoder``, ``encdec``).

An architecture owns the embedding, the head and the mask; its stacks are built from the slot factories.
"""

from zoo.arch.encdec import EncoderDecoder
from zoo.arch.lm import CausalLM, EncoderLM, PrefixLM, TransformerLM
from zoo.arch.pattern import LayerPattern
from zoo.arch.stack import Stack

__all__ = ["TransformerLM", "CausalLM", "PrefixLM", "EncoderLM", "EncoderDecoder", "Stack", "LayerPattern"]
