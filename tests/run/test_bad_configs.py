"""A catalogue of bad configs: each is one line naming its key, before any heavy work.

Each case runs in process (``zoo.compose`` then ``zoo.train.train``) with W&B on and the caches in
the test's folder, and nothing may be left behind: no token cache, no trained tokenizer, no
checkpoint, no W&B run, no ``log.jsonl``. The command line gives the same line with status 2
(``test_the_command_line``)."""

import os
import subprocess
import sys

import pytest

from zoo.errors import ConfigError

BASE = [
    "experiment=smoke", "data.corpus.sources=[pydoc]", "data.corpus.max_bytes=60000", "trainer.max_steps=2",
    "trainer.quiet=true", "trainer.sample.max_new_tokens=0", "logger=wandb",
]  # fmt: skip

#: overrides, the key the message must name (and a word it must hold)
BAD = [
    (["model.dropout=1.5"], "model.dropout"),
    (["model.dim=-8"], "model.dim"),
    (["model.n_layers=0"], "model.n_layers"),
    (["model.norm.eps=0"], "model.norm.eps"),
    (["model.n_heads=3"], "model.n_heads"),
    (["model.dimm=64"], "did you mean model.dim?"),
    (["trainer.max_stepss=3"], "did you mean trainer.max_steps?"),
    (["+optim.lrr=1"], "did you mean optim.lr?"),
    (["optim.lr=-1"], "optim.lr"),
    (["optim.weight_decay=-0.1"], "optim.weight_decay"),
    (["optim.betas=[0.9,1.5]"], "optim.betas"),
    (["sched.warmup_steps=-1"], "sched.warmup_steps"),
    (["sched.min_lr_ratio=2"], "sched.min_lr_ratio"),
    (["sched=wsd", "sched.decay_fraction=0"], "sched.decay_fraction"),
    (["model/pos=NoPositions"], "model/pos"),
    (["model/ffn=swiglo"], "model/ffn"),
    (["optim=adamx"], "optim"),
    (["trainer.max_steps=0"], "trainer.max_steps"),
    (["trainer.batch_size=-1"], "trainer.batch_size"),
    (["trainer.precision=fp16"], "trainer.precision"),
    (["trainer.batch_size=3", "trainer.grad_accum=2"], "trainer.batch_size"),
    (["trainer.eval_every=-1"], "trainer.eval_every"),
    (["+trainer.bogus=1"], "trainer.bogus"),
    (["trainer.resume=/no/such/run"], "trainer.resume"),
    (["objective=span_corruption"], "objective"),
    (["model=encdec"], "objective"),
    (["model/pos=learned", "trainer.seq_len=64"], "trainer.seq_len"),
    (["data.boundaries=sideways"], "data.boundaries"),
    (["tokenizer=bpe", "tokenizer.vocab_size=100"], "tokenizer.vocab_size"),
    (["model._target_=os.system"], "model._target_"),
    (["data.corpus.max_bytes=100"], "at least one document"),
    (["model=prefix", "objective=blank_infilling"], "model/pos"),
    (["model=prefix", "model/pos=learned_2d", "objective=blank_infilling", "objective.mask_ratio=0.9"], "objective.mask_ratio"),
    (["model=prefix", "model/pos=rope_2d", "objective=blank_infilling", "tokenizer.n_sentinels=1"], "tokenizer.n_sentinels"),
    # the decoder's own pattern is named as the user set it, not as the encoder's model.layers
    (["model=encdec", "objective=span_corruption", "model/layers@model.decoder_layers=local_global_1to1", "model.decoder_layers.pattern=[local,middle]"], "model.decoder_layers.pattern='middle'"),
    (["model=encdec", "objective=span_corruption", "model/layers@model.decoder_layers=local_global_1to1", "model.decoder_layers.pattern=[]"], "model.decoder_layers.pattern=[]"),
    (["model=encdec", "objective=span_corruption", "model/layers@model.decoder_layers=local_global_1to1", "+model.decoder_layers.kinds.local.mixer={}"], "model.decoder_layers.kinds.local.mixer"),
]


@pytest.fixture
def folders(tmp_path, monkeypatch):
    cache, wandb = tmp_path / "cache", tmp_path / "wandb_dir"
    monkeypatch.setenv("ZOO_CACHE", str(cache))
    monkeypatch.setenv("WANDB_DIR", str(wandb))
    monkeypatch.setenv("WANDB_MODE", "offline")
    return tmp_path / "run", cache, wandb


def test_the_catalogue_has_at_least_25_cases():
    assert len(BAD) >= 25


@pytest.mark.parametrize("overrides, named", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_bad_config_is_one_line_naming_its_key_and_leaves_nothing(overrides, named, folders):
    import zoo
    from zoo.train import train

    run_dir, cache, wandb = folders
    with pytest.raises(ConfigError) as error:
        train(zoo.compose([*BASE, *overrides]), out_dir=run_dir)
    message = str(error.value)
    assert "\n" not in message and named in message, message
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*")), sorted(cache.rglob("*"))
    assert not wandb.exists() and not (run_dir / "wandb").exists()
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "log.jsonl").exists()


def test_resume_under_a_different_config_lists_the_keys(folders):
    from zoo.train import run

    run_dir, _, _ = folders
    assert run([*BASE, "logger=none"], out_dir=run_dir).status == "ok"
    with pytest.raises(ConfigError) as error:
        run([*BASE, "logger=none", "model.dim=64", "trainer.batch_size=8", "trainer.resume=auto"], out_dir=run_dir)
    assert "model.dim (32 -> 64)" in str(error.value) and "trainer.batch_size (4 -> 8)" in str(error.value)


@pytest.mark.parametrize("overrides, named", [(["model.dimm=64"], "did you mean model.dim?"), (["model/pos=NoPositions"], "model/pos"), (["optim.lr=-1"], "optim.lr")])
def test_the_command_line(overrides, named, tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0", "ZOO_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "zoo.train", *BASE, "logger=none", *overrides, f"hydra.run.dir={tmp_path / 'run'}"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and named in done.stderr, done.stderr
