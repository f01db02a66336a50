"""Composition: Hydra overrides over ``conf/`` (shipped as ``zoo.conf``) into configs and models.

The config groups *are* the registry: an option exists when its YAML is on the search path, which
holds zoo's ``conf/`` and every installed plugin's config folder (entry-point group ``zoo.plugins``).
"""

from importlib.metadata import entry_points

import torch
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import DictConfig, OmegaConf

from zoo.errors import ConfigError
from zoo.trust import PLUGIN_GROUP, check_config

CONF_MODULE = "zoo.conf"
#: the swap points, in the order the catalogue shows them
GROUPS = ("model", "model/norm", "model/residual", "model/ffn", "model/pos", "model/attention", "model/init", "preset")


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
            raise _as_config_error(e, overrides) from None


def _as_config_error(error: Exception, overrides: list[str]) -> ConfigError:
    """Hydra's message names the bad option and lists the allowed ones; keep it, lose the traceback."""
    message = str(error).split("Config search path")[0].strip()
    message = message.replace(":\n\t", ": ", 1).replace("\n\t", ", ").replace("\n", " ")
    bad = next((o for o in overrides if o.split("=", 1)[0].lstrip("+~") in message), None)
    key, value = bad.split("=", 1) if bad and "=" in bad else ("overrides", overrides)
    return ConfigError(key, value, message)


def choices(cfg: DictConfig) -> dict[str, str]:
    """The option chosen in each group (``{"model/ffn": "swiglu", ...}``) of a composed config."""
    chosen = OmegaConf.select(cfg, "hydra.runtime.choices", default=None) or {}
    return {g: str(chosen[g]) for g in GROUPS if g in chosen and chosen[g] is not None}


def instantiate_model(model_cfg: DictConfig, *, device: torch.device | str | None = None, source: str = "the config") -> torch.nn.Module:
    """Build a model from its config; every ``_target_`` is checked against :mod:`zoo.trust` first
    (``source`` names the file it came from), then the config by building it on the meta device,
    so a mistake surfaces as a :class:`ConfigError` before any weight is allocated."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    check_config(model_cfg, source=source, prefix="model")
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
