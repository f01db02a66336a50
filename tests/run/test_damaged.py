"""Damaged files are one line naming the file and what to do; a damaged cache entry is rebuilt.

Truncations at every position class: a safetensors header, its body, a JSON file cut short."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from zoo.errors import DamagedFile

TINY = [
    "experiment=smoke", "data.corpus.sources=[pydoc]", "data.corpus.max_bytes=60000", "logger=none", "trainer.max_steps=4",
    "trainer.eval_every=0", "trainer.eval_batches=1", "trainer.final_eval_batches=1", "trainer.quiet=true",
    "trainer.sample.max_new_tokens=0", "trainer.ckpt_every=2", "trainer.keep_last=0",
]  # fmt: skip


class Payload:
    """Unpickling this creates ``marker``."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder with whole checkpoints at steps 2 and 4."""
    from zoo.train import run

    out = tmp_path_factory.mktemp("trained") / "run"
    assert run(TINY, out_dir=out).status == "ok"
    return out


@pytest.fixture
def copy(trained, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(trained, target)
    return target


def truncate(path, *, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])


def one_line(error) -> str:
    message = str(error)
    assert "\n" not in message, message
    return message


CUTS = {  # file, bytes kept (negative: cut from the end)
    "safetensors header": ("step_00000004/model.safetensors", 5),
    "safetensors header json": ("step_00000004/model.safetensors", 40),
    "safetensors body": ("step_00000004/model.safetensors", -100),
    "state.json": ("step_00000004/state.json", 30),
    "latest.json": ("latest.json", 10),
}


@pytest.mark.parametrize("cut", list(CUTS))
def test_a_truncated_checkpoint_file_is_one_line_naming_it_and_the_last_good_one(cut, copy):
    from zoo.generate import load_checkpoint

    name, keep = CUTS[cut]
    damaged = copy / "checkpoints" / name
    truncate(damaged, keep=keep)
    with pytest.raises(DamagedFile) as error:
        load_checkpoint(copy, device=torch.device("cpu"))
    message = one_line(error.value)
    assert str(damaged) in message
    good = "step_00000004" if name == "latest.json" else "step_00000002"
    assert f"last good checkpoint is {copy / 'checkpoints' / good}" in message


@pytest.mark.parametrize("name", ["optimizer.safetensors", "rng.safetensors", "model.safetensors"])
def test_resume_from_a_damaged_checkpoint_names_the_file(name, copy):
    from zoo.train import run

    truncate(copy / "checkpoints" / "step_00000004" / name, keep=-64)
    with pytest.raises(DamagedFile) as error:
        run([*TINY, "trainer.max_steps=6", "trainer.resume=auto"], out_dir=copy)
    assert name in one_line(error.value) and "step_00000002" in str(error.value)


def test_the_cli_exits_2_with_one_line(copy):
    truncate(copy / "checkpoints" / "step_00000004" / "model.safetensors", keep=-100)
    done = subprocess.run([sys.executable, "-m", "zoo.generate", f"checkpoint={copy}", "max_new_tokens=1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "model.safetensors" in done.stderr and "step_00000002" in done.stderr


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickle", "wrong tensor"])
def test_a_damaged_token_cache_entry_is_rebuilt(damage, tmp_path, capsys):
    from zoo.data import TokenData
    from zoo.data.corpus import TextCorpus
    from zoo.tokenizer import ByteTokenizer

    (tmp_path / "a.txt").write_text("".join(f"document {i}: hello world\n\n" for i in range(100)))
    tok = ByteTokenizer(n_sentinels=0)
    data = TokenData(corpus=TextCorpus(path=str(tmp_path / "a.txt"), val_percent=20), cache_dir=tmp_path / "cache")
    good = data.stream(split="train", tokenizer=tok)
    (entry,) = (tmp_path / "cache").glob("*.pt")
    marker = tmp_path / "PWNED"
    if damage == "truncated":
        truncate(entry, keep=entry.stat().st_size // 2)
    elif damage == "garbage":
        entry.write_bytes(os.urandom(200))
    elif damage == "pickle":
        torch.save({"stream": Payload(marker)}, entry)  # weights_only refuses it unread
    elif damage == "wrong tensor":
        torch.save(torch.zeros(3, 3), entry)
    fresh = TokenData(corpus=data.corpus, cache_dir=tmp_path / "cache")
    assert torch.equal(fresh.stream(split="train", tokenizer=tok), good)
    err = capsys.readouterr().err
    assert f"rebuilding the token cache entry {entry}" in err and err.count("\n") == 1
    assert torch.equal(torch.load(entry, weights_only=True), good) and not marker.exists()


@pytest.mark.parametrize("name", ["tokenizer.json", "zoo_tokenizer.json"])
def test_a_damaged_tokenizer_cache_entry_is_rebuilt(name, tmp_path, capsys):
    from zoo.tokenizer import BPETokenizer

    docs = [f"def function_{i}(x):\n    return x + {i}\n" for i in range(200)]
    first = BPETokenizer.train(documents=docs, vocab_size=400, n_sentinels=2, cache_dir=tmp_path)
    (entry,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    truncate(entry / name, keep=20)
    again = BPETokenizer.train(documents=docs, vocab_size=400, n_sentinels=2, cache_dir=tmp_path)
    assert not again.from_cache and again.id == first.id
    err = capsys.readouterr().err
    assert f"rebuilding the tokenizer cache entry {entry}" in err and err.count("\n") == 1
    assert BPETokenizer.train(documents=docs, vocab_size=400, n_sentinels=2, cache_dir=tmp_path).from_cache
