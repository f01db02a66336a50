"""Composition: Hydra overrides over ``conf/`` (shipped as ``zoo.conf``) into configs and models.

The config groups *are* the registry: an option exists when its YAML is on the search path, which
holds zoo's ``conf/`` and every installed plugin's config folder (entry-point group ``zoo.plugins``).
"""

from importlib.metadata import entry_points

import torch
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import DictConfig, OmegaConf, open_dict

from zoo.errors import ConfigError
from zoo.trust import PLUGIN_GROUP, check_config

CONF_MODULE = "zoo.conf"

#: dtype names a command line may give (zoo-generate dtype=, zoo-import --dtype), and what they mean
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: the swap points, in the order the catalogue shows them
GROUPS = ("model", "model/norm", "model/residual", "model/ffn", "model/pos", "model/attention", "model/init", "model/layers", "preset")


def plugin_config_modules() -> dict[str, str]:
    """``{plugin name: importable config package}`` of every installed zoo plugin."""
    return {ep.name: ep.value for ep in entry_points(group=PLUGIN_GROUP)}


class ZooSearchPathPlugin(SearchPathPlugin):
    """Adds each installed plugin's config package to Hydra's search path."""

    def manipulate_search_path(self, search_path) -> None:
        for name, module in plugin_config_modules().items():
            search_path.append(provider=f"zoo-plugin-{name}", path=f"pkg://{module}")


_registered = False


def register_plugins() -> None:
    """Make Hydra (``compose`` and ``@hydra.main`` alike) see the plugins' configs; idempotent."""
    global _registered
    if not _registered:
        Plugins.instance().register(ZooSearchPathPlugin)
        _registered = True


def compose(overrides: list[str], *, config_name: str = "config") -> DictConfig:
    """Compose ``config_name`` with ``overrides``; a bad option becomes a :class:`ConfigError`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_plugins()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        try:
            return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as e:
            error = _as_config_error(e, overrides)
    if error.key in {o.split("=", 1)[0] for o in overrides} and "Could not override" in error.allowed:
        error = _typo(error, overrides, config_name)
    raise error


def compose_aside(overrides: list[str], *, config_name: str = "bench") -> DictConfig:
    """:func:`compose` while a Hydra app runs (zoo-bench composing a reference or a pretraining run),
    leaving the app's global Hydra state as it was."""
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    backup = get_gh_backup()
    try:
        return compose(list(overrides), config_name=config_name)
    finally:
        restore_gh_from_backup(backup)


def _as_config_error(error: Exception, overrides: list[str]) -> ConfigError:
    """Hydra's message names the bad option and lists the allowed ones; keep it, lose the traceback."""
    message = str(error).split("Config search path")[0].strip()
    message = message.replace(":\n\t", ": ", 1).replace("\n\t", ", ").replace("\n", " ")
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    # a quoted key first: 'trainer.max_stepss' must not be taken for its prefix trainer.max_steps
    bad = next((o for o, k in zip(overrides, keys) if f"'{k}'" in message), None) or next((o for o, k in zip(overrides, keys) if k in message), None)
    key, value = bad.split("=", 1) if bad and "=" in bad else ("overrides", overrides)
    return ConfigError(key, value, message)


def _typo(error: ConfigError, overrides: list[str], config_name: str) -> ConfigError:
    """A key the config does not have: name the nearest one that it has ("did you mean model.dim?")."""
    import difflib

    rest = [o for o in overrides if o.split("=", 1)[0] != error.key]
    try:
        keys = list(_dotted_keys(compose(rest, config_name=config_name)))
    except ConfigError:
        keys = []
    same_depth = [k for k in keys if k.count(".") == error.key.count(".")]
    near = difflib.get_close_matches(error.key, same_depth, n=1, cutoff=0.6)
    hint = f"did you mean {near[0]}?" if near else f"keys under {error.key.rpartition('.')[0] or 'the root'}: {', '.join(k for k in keys if k.rpartition('.')[0] == error.key.rpartition('.')[0])[:300]}"
    return ConfigError(error.key, error.value, f"not a key of the config; {hint} (+{error.key}=... adds a new key)")


def _dotted_keys(cfg, prefix: str = ""):
    for key in cfg:
        if key == "hydra" and not prefix:
            continue
        child = f"{prefix}{key}"
        yield child
        node = cfg._get_node(key)
        if isinstance(node, DictConfig):
            yield from _dotted_keys(node, child + ".")


def choices(cfg: DictConfig) -> dict[str, str]:
    """The option chosen in each group (``{"model/ffn": "swiglu", ...}``) of a composed config."""
    chosen = OmegaConf.select(cfg, "hydra.runtime.choices", default=None) or {}
    return {g: str(chosen[g]) for g in GROUPS if g in chosen and chosen[g] is not None}


def resolved_config(cfg: DictConfig) -> dict:
    """The config as plain values, without Hydra's own node."""
    copy = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(copy):
        copy.pop("hydra", None)
    return OmegaConf.to_container(copy, resolve=True)


def instantiate_model(model_cfg: DictConfig, *, device: torch.device | str | None = None, source: str = "the config") -> torch.nn.Module:
    """Build a model from its config; every ``_target_`` is checked against :mod:`zoo.trust` first
    (``source`` names the file it came from), then the config by building it on the meta device,
    so a mistake surfaces as a :class:`ConfigError` before any weight is allocated."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    check_config(model_cfg, source=source, prefix="model")
    check_sizes(model_cfg)
    try:
        with torch.device("meta"):
            instantiate(model_cfg)
    except InstantiationException as e:
        cause = e
        while cause.__cause__ is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        detail = str(cause).strip().replace("\n", " ")
        if isinstance(cause, TypeError) and "unexpected keyword argument" in detail:
            detail += " (a key set for another option, e.g. by a preset, that the chosen option does not take)"
        raise ConfigError("model", OmegaConf.select(model_cfg, "_target_"), detail) from None
    if device is None:
        return instantiate(model_cfg)
    with torch.device(device):
        return instantiate(model_cfg)


#: the size vocabulary every component shares, and what each may be: checked by its full key before building
SIZE_RULES = {
    "dim": (lambda v: v > 0, "> 0"), "n_heads": (lambda v: v > 0, "> 0"), "n_kv_heads": (lambda v: v > 0, "> 0"),
    "head_dim": (lambda v: v > 0, "> 0"), "hidden_dim": (lambda v: v > 0, "> 0"), "n_layers": (lambda v: v > 0, "> 0"),
    "max_seq_len": (lambda v: v > 0, "> 0"), "vocab_size": (lambda v: v > 0, "> 0"), "eps": (lambda v: v > 0, "> 0"),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
}  # fmt: skip


def check_sizes(model_cfg: DictConfig, prefix: str = "model") -> None:
    """Every key of :data:`SIZE_RULES` anywhere in the model's tree, named in full (``model.attention.dropout``)."""
    for key in model_cfg:
        node = model_cfg._get_node(key)
        if isinstance(node, DictConfig):
            check_sizes(node, f"{prefix}.{key}")
            continue
        rule = SIZE_RULES.get(str(key))
        value = OmegaConf.select(model_cfg, str(key), default=None, throw_on_missing=False) if rule else None
        if rule and isinstance(value, (int, float)) and not isinstance(value, bool) and not rule[0](value):
            raise ConfigError(f"{prefix}.{key}", value, rule[1])


def build(overrides: list[str], *, device: torch.device | str | None = None) -> torch.nn.Module:
    """Compose ``overrides`` and build the model."""
    cfg = compose(overrides)
    return instantiate_model(cfg.model, device=device)


def group_options(group: str) -> list[str]:
    """The options of ``group`` on the search path (zoo's and every plugin's)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_plugins()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return sorted(loader.get_group_options(group))
