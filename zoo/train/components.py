"""Everything a run trains with, built from its config: the cheap checks first, then the heavy work.

Order: trainer settings, objective against architecture, data (its paths), the model on the meta
device (its sizes, ``trainer.seq_len`` against positions that cannot extrapolate, and what the
objective asks of it, ``Objective.check``), and only then the tokenizer (a BPE trains here), the real
model and the loaders. A user's mistake thus surfaces as
one :class:`~zoo.errors.ConfigError` naming its key before any minute is spent.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from zoo.config import instantiate_model
from zoo.data.packing import ResumableLoader, derive_seed
from zoo.data.source import DataSource
from zoo.errors import ConfigError
from zoo.objectives import check_compatible
from zoo.pos.base import Positions
from zoo.train.distributed import Dist
from zoo.tokenizer import Tokenizer
from zoo.train.settings import Settings
from zoo.trust import check_config, check_target


@dataclass
class Components:
    """What :func:`zoo.train.loop.train` runs.

    ``make_objective(seed_offset)`` builds a fresh objective (evaluation takes a new one per pass, so
    every pass draws the same masks); ``train_loader`` yields one global batch per optimizer step.
    """

    model: nn.Module
    tokenizer: Tokenizer | None
    data: DataSource
    make_objective: Callable[..., object]
    train_loader: ResumableLoader
    val_loader: ResumableLoader


def build_node(node: DictConfig, key: str, **kwargs):
    """``instantiate(node)``, with a user's mistake surfaced as the :class:`ConfigError` it is."""
    check_config(node, prefix=key)
    try:
        missing = list(_missing_keys(node))
        if missing:
            raise ConfigError(f"{key}.{missing[0]}", "???", "required: set it on the command line")
        built = instantiate(node)
        return built(**kwargs) if kwargs else built
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise _unexpected_argument(e, node, key) or ConfigError(key, OmegaConf.select(node, "_target_"), str(e).splitlines()[0]) from None


def _unexpected_argument(error: Exception, node: DictConfig, key: str) -> ConfigError | None:
    """``+optim.lrr=1``: the key the class does not take, and the nearest one it does."""
    import difflib
    import inspect
    import re

    found = re.search(r"unexpected keyword argument '(\w+)'", str(error.__cause__ or error))
    if found is None:
        return None
    name = found.group(1)
    target = str(OmegaConf.select(node, "_target_"))
    taken = [k for k in node if not str(k).startswith("_") and k != name]
    try:
        taken = [p for p in inspect.signature(get_class(target)).parameters if p not in ("self", "args", "kwargs")]
    except Exception:
        pass
    near = difflib.get_close_matches(name, taken, n=1)
    hint = f"did you mean {key}.{near[0]}?" if near else f"it takes: {', '.join(taken)}"
    return ConfigError(f"{key}.{name}", OmegaConf.select(node, name, default=None), f"not an argument of {target}; {hint}")


def _missing_keys(node, prefix: str = ""):
    for k in node:
        value = node._get_node(k)
        if OmegaConf.is_missing(node, k):
            yield f"{prefix}{k}"
        elif isinstance(value, DictConfig):
            yield from _missing_keys(value, f"{prefix}{k}.")


def class_of(node: DictConfig, key: str) -> type:
    """The class (or the class of the factory method) ``node._target_`` names, without building it."""
    target = str(node._target_)
    check_target(target, source="the config", key=f"{key}._target_")
    try:
        return get_class(target)
    except Exception:
        try:  # a classmethod factory such as zoo.tokenizer.BPETokenizer.from_corpus
            return get_class(target.rsplit(".", 1)[0])
        except Exception:
            raise ConfigError(f"{key}._target_", target, "an importable class") from None


def check_positions(model: nn.Module, *, seq_len: int, key: str = "trainer.seq_len") -> None:
    """Refuse a sequence length that a position scheme of ``model`` cannot encode (learned positions)."""
    for module in model.modules():
        limit = getattr(module, "max_positions", None) if isinstance(module, Positions) else None
        if limit is not None and seq_len > limit:
            raise ConfigError(
                key, seq_len, f"<= model.max_seq_len={limit} with {type(module).__name__}: raise model.max_seq_len or pick model/pos=rope, alibi, t5 or none"
            )


def build(cfg: DictConfig, *, settings: Settings, dist: Dist, tokenizer=None) -> Components:
    """Build the run's components (module docstring for the order).

    Args:
        cfg: the composed config; ``model.vocab_size`` is set here from the tokenizer (or the task).
        settings: the validated ``trainer`` settings.
        dist: this process's place in the process group.
        tokenizer: a tokenizer to use instead of building one (a resumed run's own).
    """
    objective_class = class_of(cfg.objective, "objective")
    check_compatible(objective_class, class_of(cfg.model, "model").arch)
    settings.micro_batch(dist.world)
    data = build_node(cfg.data, "data")
    task_vocab = getattr(data, "vocab_size", None)
    if task_vocab is None and getattr(data, "corpus", None) is None:
        raise ConfigError("data", OmegaConf.select(cfg, "data._target_"), "neither a text corpus nor a task vocabulary")

    # the model's shape on the meta device, with the vocabulary the tokenizer will have (or close to it)
    with open_dict(cfg):
        cfg.model.vocab_size = task_vocab or OmegaConf.select(cfg, "tokenizer.vocab_size", default=None) or cfg.model.vocab_size
    probe = instantiate_model(cfg.model, device="meta")
    check_positions(probe, seq_len=probe.input_length(settings.seq_len))
    objective_class.check(probe)  # what else the objective asks of the model (blank infilling: 2D positions)
    del probe

    if task_vocab is None:
        tokenizer = tokenizer or build_node(cfg.tokenizer, "tokenizer", corpus=data.corpus)
        vocab_size = tokenizer.vocab_size
    else:
        tokenizer, vocab_size = None, task_vocab
    with open_dict(cfg):
        cfg.model.vocab_size = vocab_size

    def make_objective(*, rank: int = 0):
        objective = build_node(cfg.objective, "objective", tokenizer=tokenizer)
        if rank:  # ranks draw their own masks for their own rows
            objective.seed = derive_seed("objective", objective.seed, rank) % 2**31
        return objective

    make_objective()  # its own settings fail now, not at the first step
    torch.manual_seed(settings.seed)
    model = instantiate_model(cfg.model, device=dist.device)
    loader_args = dict(seq_len=settings.seq_len, seed=settings.seed, tokenizer=tokenizer)
    loaders = {}
    for split, key, batch in (("train", "trainer.batch_size", settings.batch_size), ("validation", "trainer.eval_batch_size", settings.eval_batch_size or settings.batch_size)):
        try:
            loaders[split] = data.loader(split=split, batch_size=batch, **loader_args)
        except ConfigError as e:
            if e.key != "batch_size":
                raise
            raise ConfigError(
                key, batch, f"the corpus is too small for its {split} split: a batch must be {e.allowed} (use more data, a smaller trainer.seq_len or a smaller batch)"
            ) from None
    train_loader, val_loader = loaders["train"], loaders["validation"]
    return Components(
        model=model, tokenizer=tokenizer, data=data, make_objective=make_objective, train_loader=train_loader, val_loader=val_loader
    )

