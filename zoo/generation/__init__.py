"""Generation with the KV cache: sampling, the decode loop, speculative decoding.

``generate(model, prompts, max_new_tokens=...)`` is the entry point (``blank_id=``: fill a blank,
:mod:`zoo.generation.infill`); ``zoo-generate``
(:mod:`zoo.generate`) is its command line. Imports only torch.
"""

from zoo.generation.infill import fill
from zoo.generation.loop import generate, greedy_reference
from zoo.generation.result import Generation
from zoo.generation.sampling import filter_logits, next_token, probabilities
from zoo.generation.speculative import speculative_generate

__all__ = [
    "generate",
    "speculative_generate",
    "greedy_reference",
    "Generation",
    "fill",
    "filter_logits",
    "probabilities",
    "next_token",
]
