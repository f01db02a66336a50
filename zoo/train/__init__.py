"""Training (``zoo-train``): a Hydra app that trains any composed model, checkpoints it exactly,
evaluates bits per byte, and logs every run to W&B (offline by default).

Python API: :func:`train` runs one config (``zoo.compose([...])``) into a folder and returns a
:class:`~zoo.train.loop.RunResult`; :func:`run` composes the overrides first. :func:`main` is the CLI.
Hydra, torch and W&B are imported when these are called, not by ``import zoo.train``.
"""


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


__all__ = ["main", "run", "train"]
