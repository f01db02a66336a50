"""A run folder belongs to one run: a lock while it writes, no silent overwrite, stale temp files cleaned."""

import json
import os
import subprocess
import sys

import pytest

from zoo.run.folder import FolderTaken, claim, is_held

TINY = [
    "experiment=smoke", "data.corpus.sources=[pydoc]", "data.corpus.max_bytes=60000", "logger=none", "trainer.max_steps=2",
    "trainer.eval_every=0", "trainer.eval_batches=1", "trainer.final_eval_batches=1", "trainer.quiet=true",
    "trainer.sample.max_new_tokens=0",
]  # fmt: skip


def test_a_held_folder_refuses_a_second_claim_and_is_free_after(tmp_path):
    with claim(tmp_path / "run"):
        assert is_held(tmp_path / "run")
        with pytest.raises(FolderTaken, match=f"pid {os.getpid()}"):
            with claim(tmp_path / "run"):
                pass
    assert not is_held(tmp_path / "run")
    with claim(tmp_path / "run"):  # released: free again
        pass


def test_a_second_run_into_a_held_folder_is_one_line_and_touches_nothing(tmp_path):
    """A first run (here a process holding the folder as zoo-train does) keeps its folder: the second exits 2."""
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from zoo.run.folder import claim\nimport sys\nwith claim({str(run_dir)!r}):\n    print('held', flush=True)\n    sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        (run_dir / "metrics.json").write_text("mine")
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "overrides.yaml").write_text("mine")  # Hydra's record of the first run
        env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
        second = subprocess.run([sys.executable, "-m", "zoo.train", *TINY, f"hydra.run.dir={run_dir}"], env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and second.stderr.count("\n") == 1 and "another run" in second.stderr, second.stderr
        assert (run_dir / "metrics.json").read_text() == "mine" and not (run_dir / "checkpoints").exists()
        assert (run_dir / ".hydra" / "overrides.yaml").read_text() == "mine"
        assert not (run_dir / ".hydra" / "config.yaml").exists()
    finally:
        holder.communicate("", timeout=30)
    assert holder.returncode == 0


def test_a_fresh_run_into_a_folder_with_checkpoints_refuses_unless_resumed_or_overwritten(tmp_path):
    from zoo.train import run

    first = run(TINY, out_dir=tmp_path)
    saved = first.checkpoint
    with pytest.raises(FolderTaken, match="trainer.resume=auto .* trainer.overwrite=true"):
        run(TINY, out_dir=tmp_path)
    assert saved.exists() and json.loads((tmp_path / "metrics.json").read_text())["status"] == "ok"  # the refusal wrote nothing
    resumed = run([*TINY, "trainer.max_steps=3", "trainer.resume=auto"], out_dir=tmp_path)
    assert resumed.status == "ok" and resumed.history and len(resumed.history) == 1
    again = run([*TINY, "trainer.overwrite=true"], out_dir=tmp_path)
    assert again.status == "ok" and len(again.history) == 2 and [p.name for p in (tmp_path / "checkpoints").glob("step_*")] == ["step_00000002"]


def test_stale_temporary_files_are_cleaned_when_a_run_starts(tmp_path):
    from zoo.train import run

    ckpts = tmp_path / "checkpoints"
    (ckpts / ".tmp-step-abc").mkdir(parents=True)
    (ckpts / ".tmp-step-abc" / "model.safetensors").write_bytes(b"half")
    (ckpts / ".old-step-x").mkdir()
    (tmp_path / ".tmp-metrics.json-123").write_text("{")
    assert run(TINY, out_dir=tmp_path).status == "ok"
    assert not [p for p in [*tmp_path.iterdir(), *ckpts.iterdir()] if p.name.startswith((".tmp-", ".old-"))]
