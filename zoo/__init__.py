"""zoo: a plugin-based architecture zoo for comparing transformer variants.

Components import one by one (``zoo.norm``, ``zoo.ffn``, ``zoo.pos``, ``zoo.attention``,
``zoo.residual``, ``zoo.arch``) and import only torch and einops. :func:`build` and :func:`compose`
turn Hydra overrides over ``conf/`` into a model; they import Hydra lazily.
"""

from zoo.errors import ConfigError

__version__ = "0.1.0"


def compose(overrides=(), *, config_name: str = "config"):
    """The composed config for ``overrides`` (e.g. ``["model/ffn=swiglu"]``), as Hydra's ``-m`` sees it."""
    from zoo.config import compose as _compose

    return _compose(list(overrides), config_name=config_name)


def build(overrides=(), **kwargs):
    """A model built from ``overrides`` over the default config, validated before any weight is made."""
    from zoo.config import build as _build

    return _build(list(overrides), **kwargs)


__all__ = ["ConfigError", "build", "compose", "__version__"]
