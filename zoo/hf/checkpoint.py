"""Reading a Hugging Face checkpoint without running any of its code.

A checkpoint is read as data only: ``config.json`` with :mod:`json` and weights with safetensors,
sharded (``model.safetensors.index.json``) or not. Pickled weights (``pytorch_model.bin``) are refused,
because unpickling can execute code; so are configs that ask for remote code (``auto_map``).
An in-memory ``transformers`` model is read through its ``config`` and ``state_dict()``.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from zoo.errors import ConfigError, DamagedFile
from zoo.run.checkpoint import read_json

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "tf_model.h5", "flax_model.msgpack")


@dataclass
class HFCheckpoint:
    """A checkpoint's config and weights, under Hugging Face's names.

    Args:
        config: ``config.json`` as a dict (keys a file leaves out take the model class's defaults).
        weights: ``{hf name: tensor}``.
        source: where it came from, for messages.
    """

    config: dict
    weights: dict[str, torch.Tensor]
    source: str

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))


def read(source: "str | Path | torch.nn.Module") -> HFCheckpoint:
    """A :class:`HFCheckpoint` from a local folder or an in-memory ``transformers`` model."""
    if isinstance(source, torch.nn.Module):
        return read_model(source)
    return read_folder(source)


def read_model(model: torch.nn.Module) -> HFCheckpoint:
    """Config and weights of a ``transformers`` ``PreTrainedModel`` already in memory."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise ConfigError("source", type(model).__name__, "a transformers PreTrainedModel (with .config) or a local checkpoint folder")
    return HFCheckpoint(config=config.to_dict(), weights=dict(model.state_dict()), source=type(model).__name__)


def read_config(folder: str | Path) -> dict:
    """``config.json`` of a local checkpoint folder, refusing configs that need remote code."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(
            "source", str(folder), "a local checkpoint folder (download hub checkpoints first, e.g. `hf download ORG/NAME --local-dir DIR`)"
        )
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError("source", str(folder), "a checkpoint folder with a config.json")
    config = read_json(path, remedy="download or copy the checkpoint again")
    if config.get("auto_map"):
        raise ConfigError(
            "hf_config.auto_map", config["auto_map"], "this checkpoint needs its own modeling code, which zoo never runs: only built-in transformers families import"
        )
    return config


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files holding a checkpoint's weights, in shard order."""
    index = folder / INDEX
    if index.is_file():
        weight_map = read_json(index, remedy="download or copy the checkpoint again").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(s, str) and Path(s).name == s for s in weight_map.values()):
            raise DamagedFile(index, "its weight_map is not a map of names to shard files in this folder", "download or copy the checkpoint again")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ConfigError("source", str(folder), f"{INDEX} names shards that are not in the folder: {missing}")
        return [folder / s for s in shards]
    if (folder / SINGLE).is_file():
        return [folder / SINGLE]
    pickled = [p for p in PICKLES if (folder / p).exists()]
    if pickled:
        raise ConfigError(
            "source",
            str(folder),
            f"holds only {pickled[0]}; zoo reads safetensors only, because unpickling a checkpoint can run code. "
            "If you trust the checkpoint, convert it with transformers: "
            "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)",
        )
    raise ConfigError("source", str(folder), f"a checkpoint folder with {SINGLE} or {INDEX}")


def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as e:  # SafetensorError: a truncated header or body, or not safetensors at all (a pickle)
        raise DamagedFile(path, str(e).splitlines()[0] if str(e) else type(e).__name__, "download or copy the checkpoint again") from None


def read_folder(folder: str | Path) -> HFCheckpoint:
    """Config and weights of a checkpoint folder, as ``transformers``' ``save_pretrained`` writes it."""
    folder = Path(folder)
    config = read_config(folder)
    weights: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        weights.update(_load_shard(path))
    return HFCheckpoint(config=config, weights=weights, source=str(folder))
