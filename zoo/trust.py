"""What a config or a checkpoint read from disk may name: the allowlist that keeps files from choosing code.

Sharing checkpoints is how models travel, so nothing in one may pick code to run. Hydra's
``instantiate`` imports and calls whatever ``_target_`` names, and its own blocklist stops only a few
functions; zoo instead allows a ``_target_`` only when it is a class (or a class's factory method,
``zoo.tokenizer.BPETokenizer.from_corpus``) defined inside ``zoo`` or inside a package registered as a
zoo plugin (entry-point group ``zoo.plugins``). The text is checked before anything is imported; the
lookup then walks only modules of those packages, so ``zoo.train.checkpoint.torch.load`` (a module
zoo imported) or ``zoo.config.OmegaConf`` (a class zoo imported) is refused too. The whole tree is
checked before instantiation: nested targets, ``_partial_`` children and ``_args_`` lists alike.
See docs/security.md for the trust model.
"""

import functools
import importlib
import inspect
import re
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from zoo.errors import FileError

#: the entry-point group through which plugins register their config package (``zoo.config``)
PLUGIN_GROUP = "zoo.plugins"
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@functools.cache
def trusted_packages() -> tuple[str, ...]:
    """``zoo`` and the package of every installed plugin (``zoo_scalenorm.conf`` -> ``zoo_scalenorm``)."""
    plugins = {ep.value.split(":")[0].rpartition(".")[0] or ep.value.split(":")[0] for ep in entry_points(group=PLUGIN_GROUP)}
    return ("zoo", *sorted(p for p in plugins if p and p != "zoo"))


def _inside(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def allowed_targets() -> str:
    """The rule, in words, for messages."""
    return f"a class (or its factory classmethod) defined in {' or '.join(p + '.*' for p in trusted_packages())}"


def check_target(target: object, *, source: str, key: str) -> None:
    """Refuse ``target`` unless it names an allowed class; ``source`` (a file or ``"the config"``) and
    ``key`` (``model.norm._target_``) go into the one-line error. Imports only modules of trusted packages."""
    packages = trusted_packages()
    if not isinstance(target, str) or not _DOTTED.fullmatch(target) or not _inside(target, packages):
        raise FileError(source, key, target, allowed_targets())
    parts = target.split(".")
    try:
        obj = importlib.import_module(parts[0])
        for i, part in enumerate(parts[1:], start=2):
            if isinstance(obj, ModuleType) and not _inside(obj.__name__, packages):
                raise FileError(source, key, target, f"{allowed_targets()}; {obj.__name__} is a module zoo imported, not zoo's")
            if hasattr(obj, part):
                obj = getattr(obj, part)
            elif isinstance(obj, ModuleType):
                obj = importlib.import_module(".".join(parts[:i]))
            else:
                raise FileError(source, key, target, f"{allowed_targets()}; {'.'.join(parts[: i - 1])} has no {part!r}")
    except ImportError as e:
        raise FileError(source, key, target, f"an importable class ({e})") from None
    if not _allowed_object(obj, packages):
        what = getattr(obj, "__module__", None) or type(obj).__name__
        raise FileError(source, key, target, f"{allowed_targets()}; this is a {type(obj).__name__} from {what}")


def _allowed_object(obj: object, packages: tuple[str, ...]) -> bool:
    if isinstance(obj, type):
        return _inside(obj.__module__, packages)
    if inspect.ismethod(obj) and isinstance(obj.__self__, type):  # a classmethod factory
        return _inside(obj.__self__.__module__, packages) and _inside(getattr(obj.__func__, "__module__", ""), packages)
    return False


def check_config(cfg, *, source: str | Path = "the config", prefix: str = "") -> None:
    """Check every ``_target_`` in the tree ``cfg`` (a DictConfig, ListConfig, dict or list) with
    :func:`check_target`, before any of them is imported or called. ``prefix`` is the tree's own
    key (``model``) so that errors name the full key."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        raw = OmegaConf.to_container(cfg, resolve=False)
        for key, target in _targets(raw, prefix):
            if isinstance(target, str) and "${" in target:  # an interpolation: what it resolves to counts
                target = OmegaConf.select(cfg, key[len(prefix) + 1 :] if prefix else key, default=target)
            check_target(target, source=str(source), key=key)
        return
    for key, target in _targets(cfg, prefix):
        check_target(target, source=str(source), key=key)


def _targets(node, key: str):
    """``(dotted key of the _target_, its value)`` for every ``_target_`` under ``node``."""
    if isinstance(node, dict):
        for k, v in node.items():
            child = f"{key}.{k}" if key else str(k)
            if k == "_target_":
                yield child, v
            else:
                yield from _targets(v, child)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _targets(v, f"{key}.{i}" if key else str(i))


def load_config(path: str | Path):
    """A ``config.yaml`` read from disk (a checkpoint's, a converted model's), its targets checked.

    Raises: :class:`~zoo.errors.FileError` naming the file for unreadable YAML or a refused target.
    """
    from omegaconf import OmegaConf

    path = Path(path)
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml's and OmegaConf's errors alike: the file, not zoo, is at fault
        raise FileError(path, None, None, f"not a readable config ({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
    check_config(cfg, source=path)
    return cfg
