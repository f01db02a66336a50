"""Shared pieces of the fine-tuning tests: a tiny base model trained once per session."""

import pytest

#: experiment=smoke on 150 kB of pydoc prose, byte tokens, a few steps, no W&B (as tests/train's TINY_TRAIN)
TINY = [
    "experiment=smoke",
    "data.corpus.sources=[pydoc]",
    "data.corpus.max_bytes=150000",
    "logger=none",
    "trainer.max_steps=4",
    "trainer.eval_every=0",
    "trainer.eval_batches=2",
    "trainer.final_eval_batches=2",
    "trainer.quiet=true",
    "trainer.sample.max_new_tokens=0",
]


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


@pytest.fixture(scope="session")
def base_run(tmp_path_factory):
    """A run folder holding a trained tiny causal decoder (the pretrained model of these tests)."""
    from zoo.train import run

    out = tmp_path_factory.mktemp("base")
    result = run([*TINY, "optim.lr=1e-2"], out_dir=out)
    assert result.status == "ok"
    return out
