"""Checkpoints: exact round trip, no pickles, and atomic writes that survive a crash."""

import json
import os

import pytest
import torch

import zoo
from zoo.train import checkpoint as ckpt
from zoo.train.distributed import full_state
from zoo.train.optim import AdamW

TINY = ["model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.vocab_size=61", "model.max_seq_len=16"]


def _trained(seed=0):
    torch.manual_seed(seed)
    model = zoo.build(TINY)
    opt = AdamW(lr=1e-2).build(model)
    for _ in range(2):
        model(torch.randint(0, 61, (2, 8))).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _save(root, step, model, opt, **state):
    weights, optimizer = full_state(model, opt)
    return ckpt.save(
        root, step=step, weights=weights, optimizer=optimizer, state={"loader": {"epoch": 0}, **state},
        rng={f"rank0.{k}": v for k, v in ckpt.rng_tensors().items()}, config_yaml="model: {}\n", keep_last=2,
    )  # fmt: skip


def test_round_trip_is_exact_and_pickle_free(tmp_path):
    model, opt = _trained()
    path = _save(tmp_path, 2, model, opt, tokens_seen=7)
    assert sorted(p.name for p in path.iterdir()) == ["config.yaml", "model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
    expected_draw = torch.rand(3)  # what the generator gives after the save

    fresh, fresh_opt = _trained(seed=1)
    found = ckpt.find(tmp_path)
    assert found.path == path and found.step == 2 and found.state["tokens_seen"] == 7
    ckpt.load_weights(found, fresh)
    ckpt.load_optimizer(found, fresh_opt)
    ckpt.load_rng(found, rank=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert fresh.lm_head.weight is fresh.embed.weight  # tying survives loading
    saved, loaded = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert saved.keys() == loaded.keys()
    for i in saved:
        assert saved[i].keys() == loaded[i].keys() and all(torch.equal(saved[i][k], loaded[i][k]) for k in saved[i])
    assert fresh_opt.param_groups[0]["betas"][1] == 0.95
    assert torch.equal(torch.rand(3), expected_draw)


def test_find_accepts_run_folder_and_reports_missing(tmp_path):
    model, opt = _trained()
    _save(tmp_path / "run" / "checkpoints", 5, model, opt)
    assert ckpt.find(tmp_path / "run").step == 5
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.find(tmp_path / "nowhere")


def test_keep_last_prunes_older(tmp_path):
    model, opt = _trained()
    for step in (1, 2, 3):
        _save(tmp_path, step, model, opt)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000002", "step_00000003"]


@pytest.mark.parametrize("fail_on_call", [1, 2])
def test_a_crash_between_write_and_rename_keeps_the_old_checkpoint(tmp_path, monkeypatch, fail_on_call):
    """``os.replace`` raising stands for a kill: on the folder's rename (1) or on ``latest.json``'s (2)."""
    model, opt = _trained()
    _save(tmp_path, 1, model, opt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.embed.weight.add_(1.0)

    real_replace, calls = os.replace, []

    def crash(src, dst):
        calls.append(dst)
        if len(calls) == fail_on_call:
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 2, model, opt)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)

    assert json.loads((tmp_path / ckpt.LATEST).read_text())["step"] == 1
    assert not list(tmp_path.glob(".tmp-*"))  # the half-written folder is gone
    found = ckpt.find(tmp_path)
    fresh, _ = _trained(seed=3)
    ckpt.load_weights(found, fresh)
    assert found.step == 1 and all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_write_atomic_leaves_old_content_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    ckpt.write_atomic(target, "old")
    monkeypatch.setattr(ckpt.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        ckpt.write_atomic(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
