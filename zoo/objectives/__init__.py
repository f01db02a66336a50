"""Training objectives (config group ``objective``): a batch of packed rows in, model inputs and a loss out.

``objective(model, batch) -> (loss, metrics)``; ``make_inputs(batch)`` shows what the model is given.
Each objective declares the model ``arch`` values it can train (``compatible_archs``), which
:func:`check_compatible` enforces:

- ``causal_lm``: :class:`CausalLMObjective`, for ``model=causal``
- ``prefix_lm``: :class:`PrefixLMObjective`, for ``model=prefix``
- ``span_corruption``: :class:`SpanCorruptionObjective`, for ``model=encdec``
- ``mlm``: :class:`MaskedLMObjective`, for ``model=encoder``
- ``blank_infilling``: :class:`BlankInfillingObjective` (GLM), for ``model=prefix`` with 2D positions
"""

from zoo.objectives.base import Objective, add_aux_loss, check_compatible, masked_cross_entropy
from zoo.objectives.blank_infilling import BlankInfillingObjective
from zoo.objectives.lm import CausalLMObjective, PrefixLMObjective
from zoo.objectives.mlm import MaskedLMObjective
from zoo.objectives.span_corruption import SpanCorruptionObjective, random_spans_noise_mask, replace_spans

__all__ = [
    "BlankInfillingObjective",
    "CausalLMObjective",
    "MaskedLMObjective",
    "Objective",
    "PrefixLMObjective",
    "SpanCorruptionObjective",
    "add_aux_loss",
    "check_compatible",
    "masked_cross_entropy",
    "random_spans_noise_mask",
    "replace_spans",
]
