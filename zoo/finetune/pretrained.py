"""``trainer.init_from``: a run's initial weights from a pretrained source (not a resume).

A source is one of

- a zoo training checkpoint (a run folder, its ``checkpoints/`` or one ``step_*`` folder), whose
  tokenizer the run then uses, so token ids keep their meaning;
- a ``zoo-import`` folder (``config.yaml`` + ``model.safetensors``), or one ``python -m
  zoo.finetune.merge`` wrote (which also holds ``tokenizer/``);
- a local Hugging Face checkpoint folder (``config.json`` + safetensors), read as :mod:`zoo.hf` does.

The run's model is the source's composition with the model keys named on the command line taken
from the composed config: ``model=prefix`` swaps the architecture (U-PaLM's recipe, arXiv:2210.11399:
continue a trained causal decoder as a prefix decoder), ``model/pos=alibi`` a slot, ``model.dropout=0.1``
a value. The optimizer, the schedule and the data position start afresh.

Loading is strict by default: every tensor of the model must come from the source and every tensor
of the source must find a place. With ``trainer.init_strict=false`` a changed composition loads what
fits and reports the rest (:class:`LoadReport`): tensors ``new`` to the model keep their init, tensors
``dropped`` from the source are ignored, a vocabulary that grew keeps its new rows' init (``grown``),
and any other shape change keeps the init (``reshaped``). Weights are read with safetensors only.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from zoo.errors import ConfigError

KEY = "trainer.init_from"


@dataclass
class LoadReport:
    """What loading a source into a model did, tensor by tensor (names as in the model's ``state_dict``)."""

    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    grown: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every tensor of the model came from the source, and every tensor of the source was used."""
        return not (self.new or self.dropped or self.grown or self.reshaped)

    def summary(self) -> dict[str, int | list[str]]:
        """Counts, and the names of whatever did not load as it was (for ``metrics.json``)."""
        out: dict[str, int | list[str]] = {"loaded": len(self.loaded)}
        for kind in ("new", "dropped", "grown", "reshaped"):
            names = getattr(self, kind)
            out[kind] = len(names)
            if names:
                out[f"{kind}_names"] = names
        return out

    def describe(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded"]
        for kind in ("new", "dropped", "grown", "reshaped"):
            names = getattr(self, kind)
            if names:
                parts.append(f"{len(names)} {kind} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
        return "; ".join(parts)


@dataclass
class Pretrained:
    """A pretrained source, opened: its model config, its tokenizer (if it has one) and where its weights are.

    Args:
        path: the folder the weights come from.
        kind: ``checkpoint``, ``zoo`` (a ``zoo-import`` or merged folder) or ``hf``.
        model_cfg: the source's resolved ``model`` node.
        tokenizer: the tokenizer the source was trained with, or ``None``.
    """

    path: Path
    kind: str
    model_cfg: DictConfig
    tokenizer: object | None = None

    def weights(self) -> dict[str, torch.Tensor]:
        """The source's tensors under zoo's ``state_dict`` names (read with safetensors, never unpickled)."""
        if self.kind == "hf":
            from zoo.hf.checkpoint import read_folder
            from zoo.hf.convert import family_for, tied, to_zoo

            ckpt = read_folder(self.path)
            family = family_for(ckpt.config)
            return to_zoo(family, ckpt, tie=tied(family, ckpt))
        from safetensors.torch import load_file

        return load_file(str(self.path / "model.safetensors"))

    def rebase(self, cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
        """``cfg`` with its ``model`` node replaced by :func:`rebase_model` of the source's."""
        with open_dict(cfg):
            cfg.model = rebase_model(self.model_cfg, cfg.model, overrides)
        return cfg

    def load_into(self, model: nn.Module, *, strict: bool = True) -> LoadReport:
        """Copy the source's weights into ``model``; see :func:`load_weights`."""
        return load_weights(model, self.weights(), strict=strict, source=str(self.path))


def open_pretrained(source: str | Path) -> Pretrained:
    """Open ``source`` (module docstring for what it may be); a path that is none of them is a :class:`ConfigError`."""
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(KEY, str(source), "an existing folder: a zoo checkpoint or run folder, a zoo-import folder, or a local Hugging Face checkpoint folder")
    from zoo.run import checkpoint as ckpt

    try:
        found = ckpt.find(path)
    except FileNotFoundError:
        found = None
    if found is not None:
        if not (found.path / "model.safetensors").exists():
            raise ConfigError(
                KEY, str(source), "a checkpoint with the whole model: this one holds only what trained (an adapter); merge it first with "
                f"`python -m zoo.finetune.merge {source} OUT` and start from OUT",
            )
        return Pretrained(path=found.path, kind="checkpoint", model_cfg=_model_node(found.path / "config.yaml"), tokenizer=_tokenizer(found.path))
    if (path / "config.yaml").exists() and (path / "model.safetensors").exists():
        return Pretrained(path=path, kind="zoo", model_cfg=_model_node(path / "config.yaml"), tokenizer=_tokenizer(path))
    if (path / "config.json").exists():
        from zoo.hf import import_config

        cfg = import_config(path)
        return Pretrained(path=path, kind="hf", model_cfg=OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True)))
    raise ConfigError(
        KEY, str(source), "a zoo checkpoint (state.json or checkpoints/latest.json), a folder with config.yaml and model.safetensors, "
        "or a Hugging Face folder with config.json",
    )


def _model_node(path: Path) -> DictConfig:
    cfg = OmegaConf.load(path)
    return cfg.model if "model" in cfg else cfg


def _tokenizer(folder: Path):
    from zoo.tokenizer import META_FILE, load_tokenizer

    return load_tokenizer(folder / "tokenizer") if (folder / "tokenizer" / META_FILE).exists() else None


def rebase_model(source: DictConfig, composed: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The source's model node with every model key the command line names taken from ``composed``.

    Args:
        source: the pretrained model's resolved ``model`` node.
        composed: the run's composed ``model`` node (the command line's choices, on zoo's defaults).
        overrides: the command line's overrides: ``model=X`` takes the architecture (``_target_``),
            ``model/<slot>=X`` the slot's whole node, ``model.<key>=V`` that key.
    """
    model = OmegaConf.create(OmegaConf.to_container(source, resolve=True))
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "model":
            model._target_ = composed._target_
        elif key.startswith("model/"):
            path = key[len("model/") :].replace("/", ".")
            OmegaConf.update(model, path, OmegaConf.to_container(OmegaConf.select(composed, path), resolve=True), merge=False)
        elif key.startswith("model."):
            path = key[len("model.") :]
            value = OmegaConf.select(composed, path)
            OmegaConf.update(model, path, OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value, merge=False)
    return model


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], *, strict: bool = True, source: str = "") -> LoadReport:
    """Load ``weights`` into ``model`` by name, and say what did and did not fit.

    Tied tensors (one matrix under two names, as a tied LM head) count as one: a source that stores
    the matrix once under either name fills both. Only a table with ``model.vocab_size`` rows (the
    embedding, the LM head) may grow; its first rows load.

    Raises: :class:`ConfigError` under ``strict`` unless the report is complete (nothing is changed then).
    """
    own = model.state_dict()
    aliases: dict[tuple, list[str]] = {}
    for name, tensor in own.items():
        aliases.setdefault(_storage(tensor), []).append(name)
    report, chosen = LoadReport(), {}
    vocab = getattr(model, "vocab_size", None)  # only a table of the vocabulary's rows may grow
    for names in aliases.values():
        present = [n for n in names if n in weights]
        if not present:
            report.new.extend(names)
            continue
        name, target, value = present[0], own[names[0]], weights[present[0]]
        if value.shape == target.shape:
            chosen[name] = value
            report.loaded.extend(names)
        elif target.shape[0] == vocab and value.dim() == target.dim() and value.shape[1:] == target.shape[1:] and value.shape[0] < vocab:
            chosen[name] = torch.cat([value.to(target.dtype), target.detach()[value.shape[0] :].cpu()])  # a vocabulary that grew
            report.grown.extend(names)
        else:
            report.reshaped.extend(names)
    known = {n for names in aliases.values() for n in names}
    report.dropped = sorted(n for n in weights if n not in known)
    if strict and not report.complete:
        raise ConfigError(
            KEY, source, f"weights that fit the model exactly, but {report.describe()}; set trainer.init_strict=false to load what fits "
            "(new tensors keep their init, dropped ones are ignored)",
        )
    model.load_state_dict(chosen, strict=False)
    return report


def _storage(tensor: torch.Tensor) -> tuple:
    return (tensor.device.type, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)) if tensor.numel() else (id(tensor),)
