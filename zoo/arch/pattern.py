"""Per-layer patterns (``model/layers``): a stack whose layers differ.

Current open models mix layer kinds in a fixed rhythm: Gemma 2 alternates sliding-window and global
attention 1:1 (arXiv:2408.00118), Gemma 3 five to one (arXiv:2503.19786); Switch and GShard put a
Mixture-of-Experts FFN in every other layer (arXiv:2101.03961, arXiv:2006.16668); Llama 4 leaves
every fourth layer without positions (NoPE). A :class:`LayerPattern` names one kind per layer,
cycled to the stack's depth, and each kind overrides some of the stack's slots for its layers, so
a pattern is one config option, swept like any other (``model/layers=local_global,uniform``).

What follows from the layers themselves needs no extra code: each layer's KV cache takes its own
attention's window (a ring for a local layer, a growing buffer for a global one), and the cost
counter reads each layer's window and FFN. A pattern serves any stack: a decoder, an encoder
(``model=encoder``), and either stack of an encoder-decoder (``model.layers`` for both,
``model.decoder_layers`` for the decoder's own); in a bidirectional stack a local layer's window
reaches both ways, and a kind whose mixer reads left to right is refused.
"""

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from zoo.errors import ConfigError

Factory = Callable[..., Any]

#: the slots a kind of layer may override: the stack's per-layer factories
SLOTS = ("attention", "ffn", "norm", "residual", "pos")


class LayerPattern:
    """Kinds of layers in a repeating pattern, each a set of slot overrides.

    Args:
        pattern: kind names, one per layer, cycled to ``n_layers``
            (``[local, local, local, local, local, global]``: Gemma 3).
        kinds: ``{kind: {slot: override}}`` for the slots of :data:`SLOTS`. An override is either a
            factory (a ``_partial_`` config node: that slot's option for these layers, e.g. a MoE FFN)
            or a mapping of keyword arguments set on the stack's own factory (``{window: 64}``: the
            model's attention, whatever its option, with a window). A kind with no overrides is the
            stack's layer as configured.
    """

    def __init__(self, *, pattern: Sequence[str], kinds: Mapping[str, Mapping[str, Any] | None]) -> None:
        # checked by the stack that takes it (:meth:`check`): only the stack knows where in the config
        # the pattern sits (``model.layers``, or an encoder-decoder's ``model.decoder_layers``)
        self.pattern, self.kinds = list(pattern), {str(k): dict(v or {}) for k, v in kinds.items()}

    def check(self, *, key: str = "model.layers") -> None:
        """Refuse, in one line naming ``key`` (where the pattern sits in the config), an empty pattern,
        a kind it names but does not define, or an override of something other than a slot."""
        if not self.pattern:
            raise ConfigError(f"{key}.pattern", self.pattern, "at least one kind name, e.g. [local, global]")
        for name in self.pattern:
            if name not in self.kinds:
                raise ConfigError(f"{key}.pattern", name, f"a kind defined in {key}.kinds: one of {sorted(self.kinds)}")
        for kind, overrides in self.kinds.items():
            for slot, override in overrides.items():
                if slot not in SLOTS:
                    raise ConfigError(f"{key}.kinds.{kind}.{slot}", override, f"a slot a layer may override: one of {list(SLOTS)}")
                if not callable(override) and not isinstance(override, Mapping):
                    raise ConfigError(f"{key}.kinds.{kind}.{slot}", override, "a _partial_ option of the slot, or a mapping of its settings")

    @classmethod
    def uniform(cls) -> "LayerPattern":
        """Every layer as the slots configure it."""
        return cls(pattern=["same"], kinds={"same": {}})

    @property
    def is_uniform(self) -> bool:
        """Whether every layer is built alike (no kind in use overrides a slot)."""
        return not any(self.kinds[name] for name in self.pattern)

    def kind(self, layer: int) -> str:
        """The kind of layer ``layer`` (0-based)."""
        return self.pattern[layer % len(self.pattern)]

    def factories(self, kind: str, base: Mapping[str, Factory], *, key: str = "model.layers") -> dict[str, Factory]:
        """The slot factories of ``kind``: ``base`` (every slot of :data:`SLOTS`) with its overrides;
        ``key`` is where the pattern sits in the config (``model.decoder_layers``), for errors."""
        out = dict(base)
        for slot, override in self.kinds[kind].items():
            if not callable(override):
                _check_settings(base[slot], override, key=f"{key}.kinds.{kind}.{slot}")
            out[slot] = override if callable(override) else functools.partial(base[slot], **override)
        return out

    def overrides(self, kind: str) -> tuple[str, ...]:
        """The slots ``kind`` overrides."""
        return tuple(self.kinds[kind])

    def describe(self, n_layers: int) -> str:
        """The kinds of ``n_layers`` layers in runs, e.g. ``local x5, global x1`` (repeated runs collapsed)."""
        runs: list[list] = []
        for i in range(n_layers):
            kind = self.kind(i)
            if runs and runs[-1][0] == kind:
                runs[-1][1] += 1
            else:
                runs.append([kind, 1])
        return ", ".join(f"{kind} x{count}" for kind, count in runs)


def _check_settings(factory: Factory, settings: Mapping[str, Any], *, key: str) -> None:
    """Refuse settings the slot's option does not take (``{window: 8}`` on a recurrent mixer), in one line
    naming the key, rather than as a ``TypeError`` when the layer is built."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [name for name, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for name, value in settings.items():
        if name not in params:
            owner = getattr(getattr(factory, "func", factory), "__name__", "the option")
            raise ConfigError(f"{key}.{name}", value, f"a setting {owner} takes: one of {allowed}")
