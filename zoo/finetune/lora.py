"""LoRA: low-rank adapters beside frozen linear layers (Hu et al. 2021, arXiv:2106.09685); ``adapter=lora``.

Each targeted ``nn.Linear`` becomes a :class:`LoRALinear`, which keeps the layer's own ``weight`` and
``bias`` (so the frozen base keeps its ``state_dict`` names and zoo's checkpoints, loaders and
exporters see the same tensors) and adds ``lora_A`` and ``lora_B``, named as PEFT names them.
:meth:`LoRA.merge` folds ``W + (alpha / r) B A`` back into plain ``nn.Linear`` layers.

Why not PEFT itself: it does wrap zoo's modules, but it renames the weights it wraps
(``q_proj.weight`` becomes ``base_model.model....q_proj.base_layer.weight``), which every
name-keyed part of zoo (checkpoints, strict loading, ``zoo.hf`` export) would have to translate, and
``import peft`` pulls in ``transformers`` and ``accelerate`` (measured here: longer than importing
torch). Adapters are still written in PEFT's format (:mod:`zoo.finetune.peft_format`), and the tests
load them with ``peft`` onto the ``zoo.hf.save_pretrained`` export.
"""

import fnmatch
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.finetune.adapters import FullFineTuning

#: ``adapter.targets`` value that targets every linear layer but the LM head (PEFT's ``all-linear``)
ALL_LINEAR = "all_linear"
#: output layers never adapted by ``all_linear``: they are tied to the embedding, or trained whole
HEADS = ("lm_head", "classifier")


class LoRALinear(nn.Linear):
    """A linear layer plus a trainable low-rank update: ``y = x W^T + b + (alpha / r) dropout(x) A^T B^T``.

    Args:
        base: the layer to adapt; its ``weight`` and ``bias`` are taken over (not copied) and frozen.
        rank: ``r``, the update's rank (> 0).
        alpha: the update is scaled by ``alpha / rank``.
        dropout: dropout on the update's input.

    ``lora_A`` is drawn as ``nn.Linear`` draws its weight, ``lora_B`` starts at zero, so the layer
    starts as the base layer. Shapes: ``(..., in_features) -> (..., out_features)``.
    """

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, **factory)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, **factory)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout)
        self.rank, self.scaling = rank, alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta(self) -> torch.Tensor:
        """``(out_features, in_features)``: the update ``(alpha / r) B A`` the adapter adds to ``weight``."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the update folded into its weight."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight + self.delta().to(self.weight.dtype))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}"


class LoRA(FullFineTuning):
    """``adapter=lora``: freeze the model and adapt the linear layers ``targets`` names.

    Args:
        rank: ``r`` (> 0).
        alpha: scale numerator; the update is scaled by ``alpha / rank``.
        dropout: dropout on the adapters' input.
        targets: module name patterns: a pattern matches a linear layer whose last name component
            equals it (``q_proj``) or whose full dotted name matches it as a glob
            (``stack.layers.0.*``); or ``all_linear`` (every linear layer but the output heads).
    """

    def __init__(self, *, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0, targets: Sequence[str] | str = ("q_proj", "v_proj")) -> None:
        if rank <= 0:
            raise ConfigError("adapter.rank", rank, "> 0")
        if not 0 <= dropout < 1:
            raise ConfigError("adapter.dropout", dropout, "in [0, 1)")
        targets = [targets] if isinstance(targets, str) else list(targets)
        if not targets:
            raise ConfigError("adapter.targets", targets, f"module name patterns such as [q_proj,v_proj], or {ALL_LINEAR}")
        self.rank, self.alpha, self.dropout, self.targets = rank, float(alpha), dropout, targets

    def matches(self, model: nn.Module) -> list[str]:
        """The names of the linear layers of ``model`` the targets pick (a pattern matching none is a :class:`ConfigError`)."""
        linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)]
        if self.targets == [ALL_LINEAR]:
            return [n for n in linears if n.rsplit(".", 1)[-1] not in HEADS]
        picked = set()
        for pattern in self.targets:
            hits = [n for n in linears if n.rsplit(".", 1)[-1] == pattern or fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                short = sorted({n.rsplit(".", 1)[-1] for n in linears})
                raise ConfigError("adapter.targets", pattern, f"a pattern matching a linear layer: one of {short}, a glob of full names, or {ALL_LINEAR}")
            picked.update(hits)
        return [n for n in linears if n in picked]

    def apply(self, model: nn.Module) -> None:
        """Freeze every parameter of ``model`` and put a :class:`LoRALinear` in place of each target."""
        targets = self.matches(model)
        model.requires_grad_(False)
        for name in targets:
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent)
            setattr(owner, child, LoRALinear(getattr(owner, child), rank=self.rank, alpha=self.alpha, dropout=self.dropout))

    def merge(self, model: nn.Module) -> nn.Module:
        """Fold every adapter of ``model`` into its base weight, in place; returns ``model``, whose
        ``state_dict`` is the base model's again."""
        for name, module in list(model.named_modules()):
            if isinstance(module, LoRALinear):
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, module.merged())
        return model

    def unload(self, model: nn.Module) -> nn.Module:
        """Take every adapter out of ``model`` without folding it in, in place: the base model again."""
        for name, module in list(model.named_modules()):
            if isinstance(module, LoRALinear):
                parent, _, child = name.rpartition(".")
                plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
                plain.weight, plain.bias = module.weight, module.bias
                setattr(model.get_submodule(parent), child, plain)
        return model

    def __repr__(self) -> str:
        return f"LoRA(rank={self.rank}, alpha={self.alpha:g}, dropout={self.dropout}, targets={self.targets})"
