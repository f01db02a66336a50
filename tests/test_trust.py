"""Nothing in a checkpoint or a config file read from disk chooses code: hostile fixtures made here,
each refused with one line naming the file, the key and the value, and the marker file the payload
would create never appears."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from zoo.errors import ConfigError, DamagedFile, FileError
from zoo.trust import check_config, check_target, trusted_packages

TINY_MODEL = ["model.dim=32", "model.n_layers=1", "model.n_heads=4"]


class Payload:
    """Unpickling this creates ``marker``: what a hostile pickle does, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "the payload ran"


@pytest.fixture
def evil_module(tmp_path, marker, monkeypatch):
    """A module outside zoo, importable, whose import creates the marker."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "evil_zoo_module.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Thing:\n    def __init__(self, **kw): pass\n")
    monkeypatch.syspath_prepend(str(folder))
    return "evil_zoo_module"


def checkpoint(folder: Path, *, model_cfg=None) -> Path:
    """A checkpoint folder as zoo-train writes it (model.safetensors, config.yaml, tokenizer/)."""
    from safetensors.torch import save_model

    from zoo.config import compose, instantiate_model
    from zoo.tokenizer import ByteTokenizer

    tok = ByteTokenizer(n_sentinels=4)
    cfg = compose([*TINY_MODEL, f"model.vocab_size={tok.vocab_size}"]).model
    folder.mkdir(parents=True, exist_ok=True)
    save_model(instantiate_model(cfg), str(folder / "model.safetensors"))
    config = {"model": OmegaConf.to_container(cfg, resolve=True)}
    if model_cfg is not None:
        config["model"] = model_cfg(config["model"])
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    tok.save(folder / "tokenizer")
    return folder


def hostile_configs(marker: Path, payload_file: Path, evil: str) -> dict[str, tuple]:
    """``name: (edit of the model config, the key the error must name)``."""
    shell = f"touch {marker}"
    return {
        "torch.load": (lambda m: {"_target_": "torch.load", "f": str(payload_file), "weights_only": False}, "model._target_"),
        "builtins.open": (lambda m: {"_target_": "builtins.open", "file": str(marker), "mode": "w"}, "model._target_"),
        "os.system": (lambda m: {"_target_": "os.system", "command": shell}, "model._target_"),
        "module outside zoo": (lambda m: {"_target_": f"{evil}.Thing"}, "model._target_"),
        "zoo's import of torch": (lambda m: {"_target_": "zoo.run.checkpoint.os.system", "command": shell}, "model._target_"),
        "a zoo function that writes": (lambda m: {"_target_": "zoo.run.checkpoint.write_atomic", "path": str(marker), "text": "x"}, "model._target_"),
        "a class zoo imported": (lambda m: {"_target_": "zoo.config.OmegaConf.save", "config": {}, "f": str(marker)}, "model._target_"),
        "nested partial child": (lambda m: {**m, "norm": {"_target_": "os.system", "_partial_": True, "command": shell}}, "model.norm._target_"),
        "in _args_": (lambda m: {**m, "pos": {"_target_": "zoo.pos.RoPE", "_args_": [{"_target_": "builtins.open", "file": str(marker), "mode": "w"}]}}, "model.pos._args_.0._target_"),
        "interpolated": (lambda m: {**m, "_target_": "${oc.env:ZOO_TEST_EVIL_TARGET}", "command": shell}, "model._target_"),
    }


@pytest.fixture
def payload_file(tmp_path, marker):
    path = tmp_path / "payload.pt"
    torch.save({"weights": Payload(marker)}, path)
    return path


@pytest.mark.parametrize("name", list(hostile_configs(Path("m"), Path("p"), "e")))
def test_a_checkpoint_config_naming_code_is_refused_before_anything_runs(name, tmp_path, marker, payload_file, evil_module, monkeypatch):
    from zoo.generate import load_checkpoint

    monkeypatch.setenv("ZOO_TEST_EVIL_TARGET", "os.system")
    edit, key = hostile_configs(marker, payload_file, evil_module)[name]
    folder = checkpoint(tmp_path / "ckpt", model_cfg=edit)
    with pytest.raises(FileError) as error:
        load_checkpoint(folder, device=torch.device("cpu"))
    message = str(error.value)
    assert "\n" not in message and str(folder / "config.yaml") in message and key in message
    assert evil_module not in sys.modules


def test_every_path_that_reads_a_checkpoint_checks_it(tmp_path, marker, evil_module):
    """zoo-generate's draft, zoo.hf.load, training resume and zoo-bench's loader all go through the allowlist."""
    from zoo.config import compose
    from zoo.generate import load_checkpoint
    from zoo.hf import load

    folder = checkpoint(tmp_path / "ckpt", model_cfg=lambda m: {**m, "ffn": {"_target_": f"{evil_module}.Thing", "_partial_": True}})
    with pytest.raises(FileError, match="model.ffn._target_"):
        load_checkpoint(folder, device=torch.device("cpu"), overrides=["model.n_layers=1"])  # a draft from it
    with pytest.raises(FileError, match="model.ffn._target_"):
        load(folder)
    (folder / "state.json").write_text(json.dumps({"step": 1}))
    from zoo.train import train

    cfg = compose(["experiment=smoke", "logger=none", f"trainer.resume={folder}"])
    with pytest.raises(FileError, match="model.ffn._target_"):
        train(cfg, out_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_tokenizer_metadata_may_name_only_zoos_tokenizers(tmp_path, marker, evil_module):
    from zoo.generate import load_checkpoint
    from zoo.tokenizer import META_FILE, load_tokenizer

    folder = checkpoint(tmp_path / "ckpt")
    meta = folder / "tokenizer" / META_FILE
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "class": f"{evil_module}.Thing"}))
    for load in (lambda: load_tokenizer(folder / "tokenizer"), lambda: load_checkpoint(folder, device=torch.device("cpu"))):
        with pytest.raises(FileError) as error:
            load()
        assert "\n" not in str(error.value) and str(meta) in str(error.value) and f"class='{evil_module}.Thing'" in str(error.value)
    assert evil_module not in sys.modules


def test_a_pickle_named_safetensors_is_never_unpickled(tmp_path, marker):
    from zoo.generate import load_checkpoint
    from zoo.hf.checkpoint import read_folder

    folder = checkpoint(tmp_path / "ckpt")
    (folder / "model.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(DamagedFile) as error:
        load_checkpoint(folder, device=torch.device("cpu"))
    assert "\n" not in str(error.value) and str(folder / "model.safetensors") in str(error.value)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    torch.save({"w": Payload(marker)}, hf / "model.safetensors")
    with pytest.raises(DamagedFile):
        read_folder(hf)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt"])
def test_pickled_weights_are_refused_unread(name, tmp_path, marker):
    from zoo.generate import resolve_checkpoint
    from zoo.hf.checkpoint import read_folder

    torch.save({"w": Payload(marker)}, tmp_path / name)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="safetensors only"):
        resolve_checkpoint(tmp_path)
    if name == "pytorch_model.bin":
        with pytest.raises(ConfigError, match="unpickling"):
            read_folder(tmp_path)


def test_zoo_generate_prints_one_line_and_exits_2(tmp_path, marker):
    folder = checkpoint(tmp_path / "ckpt", model_cfg=lambda m: {"_target_": "os.system", "command": f"touch {marker}"})
    done = subprocess.run(
        [sys.executable, "-m", "zoo.generate", f"checkpoint={folder}", "max_new_tokens=2"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "model._target_='os.system'" in done.stderr and "config.yaml" in done.stderr


def test_zoos_own_configs_pass_and_plugins_are_trusted():
    from zoo.config import compose

    cfg = compose(["model/ffn=moe", "tokenizer=bpe"])
    for group in ("model", "data", "tokenizer", "objective", "optim", "sched", "logger"):
        check_config(cfg[group], prefix=group)  # every target of a training config, the factory classmethods included
    check_target("zoo.tokenizer.BPETokenizer.from_corpus", source="x", key="k")
    assert trusted_packages()[0] == "zoo"
    for bad in ("zoo", "zoo.tokenizer", "zoo.tokenizer.load_tokenizer", "zoo.tokenizer.torch", "zoo_evil.X", "zoo..x", 3):
        with pytest.raises(FileError):
            check_target(bad, source="x", key="k")
