"""zoo.train.resume: a resumed run continues the loss curve exactly, from its own folder or a named checkpoint."""

from pathlib import Path

from zoo.train import run
from zoo.train.resume import resumes_here
from zoo.train.settings import Settings


def test_resume_continues_the_loss_curve_exactly(tmp_path, tiny):
    # dropout draws from the RNG and the data loader is mid-epoch: both must come back as they were
    common = [*tiny, "model.dropout=0.1", "trainer.max_steps=6"]
    whole = run([*common, "trainer.ckpt_every=3", "trainer.keep_last=0"], out_dir=tmp_path / "whole")
    resumed = run([*common, f"trainer.resume={tmp_path / 'whole' / 'checkpoints' / 'step_00000003'}"], out_dir=tmp_path / "resumed")
    assert resumed.history == whole.history[3:]
    assert resumed.metrics["val_loss"] == whole.metrics["val_loss"]
    assert resumed.metrics["tokens_seen"] == whole.metrics["tokens_seen"]


def test_resume_auto_picks_up_the_run_folder(tmp_path, tiny):
    first = run([*tiny, "trainer.max_steps=3"], out_dir=tmp_path)
    again = run([*tiny, "trainer.max_steps=5", "trainer.resume=auto"], out_dir=tmp_path)
    assert len(first.history) == 3 and len(again.history) == 2 and again.metrics["steps"] == 5


def test_a_run_resumes_here_only_from_auto_or_a_checkpoint_inside_its_folder(tmp_path):
    folder = tmp_path / "run"
    assert not resumes_here(Settings(), folder)
    assert resumes_here(Settings(resume="auto"), folder)
    assert resumes_here(Settings(resume=str(folder / "checkpoints" / "step_00000003")), folder)
    assert not resumes_here(Settings(resume=str(tmp_path / "other" / "checkpoints")), folder)
    assert resumes_here(Settings(resume=str(Path(folder))), folder)
