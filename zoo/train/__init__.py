"""Training (``zoo-train``): a Hydra app that trains any composed model, checkpoints it exactly,
evaluates bits per byte, and logs every run to W&B (offline by default).

Python API: :func:`train` runs one config (``zoo.compose([...])``) into a folder and returns a
:class:`~zoo.train.steps.RunResult`; :func:`run` composes the overrides first. :func:`main` is the CLI.

The names in ``__all__`` are what the rest of zoo (``zoo.bench``, ``zoo.finetune``) may use of training:
``from zoo.train import Settings, build, evaluate``, never ``zoo.train.<module>`` (tests/test_layers.py
holds the other packages to that). Hydra, torch and W&B are imported when a name is first used, not
by ``import zoo.train``.
"""

import importlib


def main() -> None:
    """``zoo-train [overrides...]`` / ``python -m zoo.train``."""
    from zoo.train.app import main as app_main

    app_main()


def train(cfg, *, out_dir, info=None):
    """Train the model ``cfg`` (a composed config) describes, writing into ``out_dir``; see :func:`zoo.train.loop.train`."""
    from zoo.train.loop import train as _train

    return _train(cfg, out_dir=out_dir, info=info)


def run(overrides=(), *, out_dir):
    """Compose ``overrides`` (as on the command line) and train: ``run(["model/ffn=gelu"], out_dir="runs/a")``."""
    import zoo

    return train(zoo.compose(list(overrides)), out_dir=out_dir)


#: the rest of the public API, by the module that defines it (imported on first use)
_LAZY = {
    "Settings": "zoo.train.settings",  # the trainer group, checked
    "Dist": "zoo.train.distributed",  # this process's rank and world (one process: Dist())
    "build": "zoo.train.components",  # a run's parts: tokenizer, data, model, objective, loaders
    "build_node": "zoo.train.components",  # one group's node (optim, sched, adapter, objective), checked
    "evaluate": "zoo.train.metrics",  # validation loss, accuracy and bits per byte of a model
    "forever": "zoo.train.steps",  # a loader's batches, epoch after epoch
    "param_groups": "zoo.train.optim",  # the decayed and the exempt parameters
    "fused_by_default": "zoo.train.optim",  # whether torch has a fused AdamW for a model's device
    "RunInfo": "zoo.train.sweep",  # who a run is: name, group, overrides (trainer.init_from keeps their model keys)
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zoo.train' has no attribute {name!r}")


__all__ = ["main", "run", "train", *_LAZY]
