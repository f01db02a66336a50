"""Attention kernels: the arithmetic of ``softmax(q k^T * scale + bias) v`` under a :class:`Mask`.

Kept apart from the attention *structure* (projections, heads, positions, cache) so that each fast
path can be held equal to the short eager reference by tests. Here: the registry :data:`KERNEL_SPECS`
of what every kernel supports (the reference ``eager`` and torch's fused ``sdpa`` of
:mod:`zoo.attention.dense`, the blocked sliding window ``local`` of :mod:`zoo.attention.local`, the
gathered sparse patterns ``sparse`` of :mod:`zoo.attention.gathered`, the compiled ``flex`` of
:mod:`zoo.attention.flex`), and ``auto``, which picks one per call.

Letters: ``b`` batch, ``h`` query heads, ``k`` KV heads, ``n`` queries, ``m`` keys, ``d`` head dim.
Every kernel takes ``q (b, h, n, d)``, ``k, v (b, k, m, d)`` and returns ``(b, h, n, d)``.
"""

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from zoo.attention.dense import eager, sdpa
from zoo.attention.flex import flex, flex_importable
from zoo.attention.gathered import sparse
from zoo.attention.local import local
from zoo.attention.sparse import Pattern
from zoo.attention.signature import Kernel
from zoo.errors import ConfigError

@dataclass(frozen=True)
class KernelSpec:
    """What one kernel can do, declared next to it: ``auto``, the config validator and ``zoo-info``'s
    compatibility matrix read these fields rather than a hand-kept list.

    Args:
        fn: the kernel, with the signature of :func:`eager`.
        summary: one line for catalogues.
        supports_bias: takes a score bias (ALiBi, T5).
        supports_softcap: soft-caps scores (Gemma 2's ``cap * tanh(s / cap)``); only these take ``softcap=``.
        supports_sinks: adds a learned sink logit per head to each softmax (gpt-oss); only these take ``sinks=``.
        sinks_on_cpu: adds sinks on CPU too (FlexAttention's compiled CPU kernel returns no log-sum-exp to add them with).
        supports_dropout: applies attention dropout.
        supports_backward_on_cpu: differentiable on CPU (FlexAttention is not, in torch 2.13).
        needs_cuda: runs only on a CUDA device.
        needs_compile: compiled with ``torch.compile`` on first use (slow first call).
        linear_window: a sliding window costs ``O(n * window)`` rather than ``O(n^2)``.
        sparse_pattern: a sparse pattern (:mod:`zoo.attention.sparse`) costs the keys it lets each query
            see rather than ``O(n^2)``.
        min_head_dim_cuda: the smallest head width it runs on CUDA (FlexAttention's Triton lowering: 16).
        available: whether this torch build has what the kernel needs.
    """

    fn: Kernel
    summary: str
    supports_bias: bool = True
    supports_softcap: bool = False
    supports_sinks: bool = False
    sinks_on_cpu: bool = True
    supports_dropout: bool = True
    supports_backward_on_cpu: bool = True
    needs_cuda: bool = False
    needs_compile: bool = False
    linear_window: bool = False
    sparse_pattern: bool = False
    min_head_dim_cuda: int = 1
    available: Callable[[], bool] = lambda: True

    def refusal(
        self, *, device: torch.device | None, backward: bool, dropout: float, softcap: float | None = None, head_dim: int | None = None,
        sinks: bool = False,
    ) -> str | None:
        """Why this kernel cannot run on ``device`` (``None``: at build time, device unknown) in this mode
        and at this head width (``None``: unknown), or ``None`` when it can."""
        if not self.available():
            return f"is not available in torch {torch.__version__}"
        if softcap is not None and not self.supports_softcap:
            allowed = [name for name, spec in KERNEL_SPECS.items() if spec.supports_softcap]
            return f"cannot soft-cap scores (model.attention.softcap={softcap}): pick kernel={' or '.join(allowed)} or auto"
        if sinks and not self.supports_sinks:
            allowed = [name for name, spec in KERNEL_SPECS.items() if spec.supports_sinks]
            return f"cannot add attention sinks (model.attention.sinks=true): pick kernel={' or '.join(allowed)} or auto"
        if dropout and not self.supports_dropout:
            return "has no attention dropout: set model.dropout=0 or pick sdpa/local"
        if device is None:
            return None
        if self.needs_cuda and device.type != "cuda":
            return f"needs a CUDA device, got {device.type}"
        if device.type == "cuda" and head_dim is not None and head_dim < self.min_head_dim_cuda:
            return f"needs heads of at least {self.min_head_dim_cuda} channels on CUDA, got {head_dim}: widen model.head_dim or pick sdpa/local"
        if sinks and device.type == "cpu" and not self.sinks_on_cpu:
            return f"cannot add attention sinks on CPU in torch {torch.__version__}: pick kernel=eager or auto"
        if backward and device.type == "cpu" and not self.supports_backward_on_cpu:
            return (
                f"has no backward on CPU in torch {torch.__version__}: train with kernel=local or auto, "
                "or run it under torch.no_grad() for inference"
            )
        return None


#: Every kernel and what it supports; ``model.attention.kernel`` is one of these names or ``auto``.
KERNEL_SPECS: dict[str, KernelSpec] = {
    "eager": KernelSpec(eager, "reference: every score materialised, softmax in float32", supports_softcap=True, supports_sinks=True),
    "sdpa": KernelSpec(sdpa, "torch's fused scaled_dot_product_attention; windows as a dense mask"),
    "local": KernelSpec(local, "blocked sliding window on SDPA: O(n * window), trains on CPU and GPU", linear_window=True),
    "sparse": KernelSpec(
        sparse,
        "sparse patterns (strided, fixed, BigBird) on SDPA over each query block's gathered keys; windows as local",
        linear_window=True,
        sparse_pattern=True,
    ),
    "flex": KernelSpec(
        flex,
        "compiled FlexAttention with a block mask: O(n * window); inference only on CPU",
        supports_softcap=True,
        supports_sinks=True,
        sinks_on_cpu=False,
        supports_dropout=False,
        supports_backward_on_cpu=False,
        needs_compile=True,
        linear_window=True,
        sparse_pattern=True,
        min_head_dim_cuda=16,  # Triton's lowering: "embedding dimension ... must be at least 16"
        available=flex_importable,
    ),
}

#: name -> kernel function, for callers that only need to call one.
KERNELS: dict[str, Kernel] = {name: spec.fn for name, spec in KERNEL_SPECS.items()}

#: the values ``model.attention.kernel`` accepts
KERNEL_CHOICES: tuple[str, ...] = ("auto", *KERNEL_SPECS)

#: with a window, ``auto`` leaves SDPA once the keys outnumber this many windows (and queries one window):
#: below it the dense masked call is as fast (benchmarks/bench_attention.py)
LONG_WINDOWS = 2

#: ``auto``'s kernel for sliding windows in CPU inference, the faster one measured there
CPU_INFERENCE_KERNEL = "local"

_broken: set[str] = set()  # device types where FlexAttention failed to compile (no compiler, no AVX2...)


def flex_runs(*, device: torch.device, backward: bool, dropout: float, head_dim: int | None) -> bool:
    """Whether FlexAttention can take this call (and has not failed to compile on this device type)."""
    spec = KERNEL_SPECS["flex"]
    return device.type not in _broken and spec.refusal(device=device, backward=backward, dropout=dropout, head_dim=head_dim) is None


def auto_kernel(
    *, window: int | None, device: torch.device, backward: bool, dropout: float, n: int, m: int, softcap: float | None = None,
    pattern: Pattern | None = None, head_dim: int | None = None, sinks: bool = False,
) -> str:
    """The name of the fastest exact kernel for this call.

    Full attention, short sequences and single-token decoding: ``sdpa``. Long sliding windows:
    ``flex`` on CUDA (training and inference) and, where measured faster, in CPU inference;
    otherwise ``local`` (the one linear-cost kernel that trains on CPU, and that has dropout).
    Sparse patterns over more keys than twice what a query sees: ``flex`` on CUDA, else ``sparse``.
    Soft-capped scores or attention sinks: ``flex`` on CUDA, else ``eager`` (SDPA can neither apply a tanh to
    scores nor add a logit to its softmax's denominator).
    Never a kernel whose declared limits (:class:`KernelSpec`) the call exceeds, e.g. ``flex`` on CUDA
    with heads narrower than 16 channels.
    """
    # asked only where it decides: every layer of every forward comes here, most of them for plain SDPA
    def flex_ok() -> bool:
        return flex_runs(device=device, backward=backward, dropout=dropout, head_dim=head_dim)

    if softcap is not None or sinks:
        return "flex" if device.type == "cuda" and flex_ok() else "eager"
    if pattern is not None:
        if m <= 2 * pattern.keys_per_query(m):
            return "sdpa"
        return "flex" if device.type == "cuda" and flex_ok() else "sparse"
    if window is None or n <= window or m <= LONG_WINDOWS * window:
        return "sdpa"
    if (device.type == "cuda" or CPU_INFERENCE_KERNEL == "flex") and flex_ok():
        return "flex"
    return "local"


def _flex_or_local(q, k, v, **kw) -> torch.Tensor:
    """``auto``'s FlexAttention: where it cannot run, ``local`` (``sparse`` for sparse patterns, ``eager``
    for soft-capped scores and sinks; said once if FlexAttention is broken here)."""
    if kw.get("softcap") is not None or kw.get("sinks") is not None:
        fallback, name = eager, "eager"
    else:
        fallback, name = (sparse, "sparse") if kw["mask"].pattern is not None else (local, "local")
    try:
        return flex(q, k, v, **kw)
    except ConfigError:  # a bias FlexAttention cannot express: local and eager take any bias
        return fallback(q, k, v, **kw)
    except torch.OutOfMemoryError:
        raise
    except Exception as error:  # compilation fails in many ways (no C++ compiler, no AVX2, no Triton)
        _broken.add(q.device.type)
        warnings.warn(f"FlexAttention failed on {q.device.type} ({type(error).__name__}: {error}); using kernel={name}", stacklevel=2)
        return fallback(q, k, v, **kw)


def pick_kernel(
    name: str, *, window: int | None, device: torch.device, backward: bool, dropout: float, n: int, m: int,
    softcap: float | None = None, pattern: Pattern | None = None, head_dim: int | None = None, sinks: bool = False,
) -> Kernel:
    """The kernel for ``name``; ``auto`` picks by device, mode, mask and sizes (:func:`auto_kernel`).
    ``head_dim``: the narrowest of the query, key and value heads.

    Raises:
        ConfigError: an explicitly chosen kernel that cannot run here (e.g. ``flex`` training on CPU).
    """
    if name == "auto":
        chosen = auto_kernel(
            window=window, device=device, backward=backward, dropout=dropout, n=n, m=m, softcap=softcap, pattern=pattern,
            head_dim=head_dim, sinks=sinks,
        )  # fmt: skip
        return _flex_or_local if chosen == "flex" else KERNELS[chosen]
    refusal = KERNEL_SPECS[name].refusal(device=device, backward=backward, dropout=dropout, softcap=softcap, head_dim=head_dim, sinks=sinks)
    if refusal is not None:
        raise ConfigError("model.attention.kernel", name, f"{name} {refusal}")
    return KERNELS[name]


def check_kernel(name: str, *, dropout: float, softcap: float | None = None, sinks: bool = False) -> None:
    """Build-time validation of ``model.attention.kernel`` against what each kernel declares, and of the
    ``softcap`` and ``sinks`` it must express."""
    if softcap is not None and not softcap > 0:
        raise ConfigError("model.attention.softcap", softcap, "a positive cap on the scores (Gemma 2: 50.0), or null for none")
    if name not in KERNEL_CHOICES:
        raise ConfigError("model.attention.kernel", name, f"one of {list(KERNEL_CHOICES)}")
    refusal = None if name == "auto" else KERNEL_SPECS[name].refusal(device=None, backward=False, dropout=dropout, softcap=softcap, sinks=sinks)
    if refusal is not None:
        raise ConfigError("model.attention.kernel", name, f"{name} {refusal}")
