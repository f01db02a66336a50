"""Shared sizes for the training tests: a tiny model on a small slice of the embedded corpus."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

#: experiment=smoke (a tiny model on 150 kB of the embedded corpus's prose, byte tokens), few steps, no W&B
TINY_TRAIN = [
    "experiment=smoke",
    "data.corpus.sources=[pydoc]",
    "data.corpus.max_bytes=150000",
    "logger=none",
    "trainer.max_steps=6",
    "trainer.eval_every=0",
    "trainer.eval_batches=2",
    "trainer.final_eval_batches=2",
    "trainer.log_every=1",
    "trainer.quiet=true",
    "trainer.sample.max_new_tokens=4",
]


def run_cli(args: list[str], *, cwd: Path, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m zoo.train ARGS`` in ``cwd``; W&B offline into ``cwd`` whatever the caller's environment."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(cwd), "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", "zoo.train", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tiny() -> list[str]:
    """:data:`TINY_TRAIN` (a fixture: test files cannot import this conftest by name, another one may shadow it)."""
    return list(TINY_TRAIN)


@pytest.fixture
def cli():
    """:func:`run_cli`."""
    return run_cli
