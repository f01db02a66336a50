"""Single-token decode steps over a static-shape KV cache, compiled once per generation.

A batch-1 decode step of a small model is a few dozen small operators: on a CPU most of its time is
spent dispatching them, not computing. With a :class:`~zoo.attention.static_cache.StaticKVCache`
every step has the same shapes, so ``torch.compile`` traces the step once and each later token
runs the fused graph: no per-operator Python, no recompilation. On CUDA the graph is also captured
as a CUDA graph (``mode="reduce-overhead"``); that path is untested here (no GPU on this machine).

The prompt is prefilled eagerly (one call of any length, on the ordinary cache); only the decode
steps go through the static cache. Speculative decoding feeds several tokens a call and takes
tokens back, which a static step does not do: it keeps the eager cache
(:func:`zoo.generation.generate` says so).

Letters: ``b`` batch, ``v`` vocabulary.
"""

import torch

from zoo.arch.session import Session
from zoo.attention.static_cache import make_static
from zoo.errors import ConfigError

#: ``torch.compile``-d :func:`_call`, one per (backend, mode): compiled code is reused by later
#: generations whose shapes match (a new batch size or cache length compiles once more, up to
#: ``torch._dynamo.config.cache_size_limit`` shapes; past it dynamo runs the step eagerly)
_COMPILED: dict[tuple[str, str | None], object] = {}


def _call(session: Session, tokens: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return session.call(tokens, positions=positions, valid=valid)


def compile_mode(device: torch.device) -> str | None:
    """``torch.compile``'s mode for a decode step: CUDA graphs on CUDA (untested here), the default elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else None


def compiled_call(device: torch.device, *, backend: str = "inductor"):
    """:func:`_call` compiled for ``device`` (``backend="eager"`` traces without generating code: tests)."""
    key = (backend, compile_mode(device) if backend == "inductor" else None)
    if key not in _COMPILED:
        # dynamic=False: shapes stay static. A symbolic cache length makes the step no faster than eager
        # on a CPU (measured), so a new batch size or cache length compiles once more instead.
        _COMPILED[key] = torch.compile(_call, backend=backend, mode=key[1], dynamic=False)
    return _COMPILED[key]


#: decode steps after which compiling pays on a CPU: compiling a step took ~15 s on 2 shared cores
#: (30-45 s the first time in a fresh process) and saved ~3 ms a step at batch 1 (up to ~4 ms at
#: batch 16 and short contexts; nothing at batch 16 past 4096 tokens, where reading the cache
#: dominates): benchmarks/bench_decode.py, docs/results.md
CPU_COMPILE_PAYS_AFTER = 5000


def compile_pays(*, steps: int) -> bool:
    """Whether ``generate(compiled=None)`` compiles: for generations long enough to pay for it on a
    CPU (measured). CUDA uses the same rule; it is not measured there (no GPU here)."""
    return steps >= CPU_COMPILE_PAYS_AFTER


class StaticDecoder:
    """Feeds one token a step to a prefilled session through a static-shape cache, compiled or not.

    Args:
        session: a session whose prompt has been fed (its cache is taken over in place).
        room: tokens still to feed (the cache must have room for them; a ring always has).
        compiled: run each step through ``torch.compile`` (else eagerly: the same arithmetic, for tests).
        backend: ``torch.compile``'s backend (``inductor`` generates fused code; ``eager`` only traces).

    Shapes: :meth:`feed` takes ``(b, 1)`` tokens and returns ``(b, 1, v)`` logits.
    """

    def __init__(self, session: Session, *, room: int, compiled: bool = True, backend: str = "inductor") -> None:
        if type(session).call is Session.call:
            raise ConfigError("generate.compiled", True, f"false: {type(session).__name__} has no Session.call to compile")
        if not session.static_steps:
            raise ConfigError("generate.compiled", True, f"false or null: {type(session).__name__} decodes on the eager cache only")
        make_static(session.cache, room=room)
        self.session, self.device = session, session.device
        self.compiled = compiled
        self.step = compiled_call(session.device, backend=backend) if compiled else _call

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        s = self.session
        start = s.fed
        # a copy, not a view: a view's storage offset moves every step, and a compiler may guard on it
        positions = s.positions[:, start : start + 1].clone()
        logits = self.step(s, tokens, positions, s.valid_at(start, 1))
        s.fed = start + 1
        return logits
