"""Job and folder naming, shared by zoo-train and zoo-bench: readable, path-safe run names and the
W&B group of a sweep.

Job folders and run names come from the overrides with the ``model/`` prefix dropped and ``/``
made path-safe (``3-ffn=geglu,norm=layernorm``); Hydra's ``override_dirname`` alone would nest
folders at every ``/`` of a group override.
"""

import hashlib
import re
import socket
from pathlib import Path

from omegaconf import OmegaConf

from zoo.config import GROUPS

def short_override(override: str) -> str:
    """``model/ffn=geglu`` -> ``ffn=geglu``, ``model.dim=64`` -> ``dim=64``; other groups keep their prefix."""
    return re.sub(r"^[+~]*model[./](?=[^=]*=)", "", override)


def job_name(overrides: str | list[str]) -> str:
    """A path-safe, readable name for a run from its overrides (``override_dirname`` or a list)."""
    items = overrides.split(",") if isinstance(overrides, str) else list(overrides)
    # a list value like [python,pydoc] was split at its commas above; glue its parts back on
    merged: list[str] = []
    for item in items:
        if merged and "=" not in item:
            merged[-1] += "," + item
        elif item:
            merged.append(item)
    # the model's choices (ffn=geglu) say most and come first, then other groups' choices, then
    # values (dim=64, then trainer.max_steps=5): a name cut for length loses the least telling part
    merged.sort(key=_rank)
    name = ",".join(short_override(o) for o in merged)
    name = re.sub(r"[/\\\s:*?\"<>|']", ".", name)
    if len(name) > 100:  # file systems cap a name at 255 bytes; keep it readable and unique
        name = name[:90] + "~" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return name


def _rank(override: str) -> tuple[int, str]:
    key = override.split("=", 1)[0].lstrip("+~")
    is_model = key == "model" or key.startswith(("model/", "model."))
    return ("." in key) * 2 + (not is_model), override


def job_dir(num, overrides: str) -> str:
    """The resolver behind ``hydra.sweep.subdir``: ``<job number>-<job name>``."""
    name = job_name(overrides or "")
    return f"{num}-{name}" if name else str(num)


def register_resolvers() -> None:
    """``${zoo.job_dir:num,override_dirname}`` for the job folders (idempotent)."""
    if not OmegaConf.has_resolver("zoo.job_dir"):
        OmegaConf.register_new_resolver("zoo.job_dir", job_dir)


def default_name(choices: dict[str, str]) -> str:
    """``causal-rmsnorm-pre-swiglu-rope-mha``: the architecture and its slots, for a run without overrides
    (a layer pattern only when its layers differ: ``...-mha-local_global_5to1``)."""
    named = [g for g in GROUPS if g in choices and g not in ("model/init", "preset")]
    return "-".join(choices[g] for g in named if (g, choices[g]) != ("model/layers", "uniform")) or "run"


def sweep_group(sweep_dir: str | None) -> str | None:
    """The W&B group of a multirun: the sweep folder's name and a digest of where it is
    (``multirun/2026-12-05_17-01-00`` -> ``2026-12-05_17-01-00-3fa2c1``), so two sweeps started in the
    same second, from two folders or two machines, never share a dashboard."""
    if not sweep_dir:
        return None
    where = f"{socket.gethostname()}:{Path(sweep_dir).resolve()}"
    return f"{Path(sweep_dir).name}-{hashlib.sha1(where.encode()).hexdigest()[:6]}"
