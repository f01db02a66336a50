"""Hugging Face checkpoints in and out of zoo compositions.

``from_pretrained`` reads a local checkpoint folder (``config.json`` and safetensors, sharded or not)
or an in-memory ``transformers`` model, composes the zoo model its config describes (Hydra
overrides, so it can be written out as YAML and changed like any composition) and loads its weights
by name, strictly. ``save_pretrained`` writes a zoo model whose composition matches a family back
as a checkpoint folder that ``transformers`` loads. Families: Llama (plain or scaled RoPE), Mistral,
Mixtral, Qwen2, Qwen3, OLMo 2, Gemma, Gemma 2, Gemma 3 (text), DeepSeek-V3, GPT-2, BLOOM, GPT-NeoX, Falcon, T5 and mT5.

Nothing here needs ``transformers``: configs are read as JSON and weights with safetensors (never
pickles). ``transformers`` is needed only to pass an in-memory model, or to check parity
(:mod:`zoo.hf.parity`).

An ablation starts from pretrained weights by adding overrides that keep the parameters' names and
shapes (``from_pretrained(path, overrides=["model/pos=alibi"])``); ``strict=False`` lets new
parameters keep their init.
"""

from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from zoo.errors import ConfigError
from zoo.hf.checkpoint import HFCheckpoint, read
from zoo.hf.convert import FAMILIES, family_for, merge_overrides, tied, to_hf, to_zoo
from zoo.hf.family import Family, expect_features

Source = str | Path | torch.nn.Module


def hf_overrides(ckpt: HFCheckpoint) -> tuple[Family, bool, list[str]]:
    """``(family, tied head, overrides)`` of a checkpoint: the zoo composition its config describes."""
    family = family_for(ckpt.config)
    family.check(ckpt.config)
    overrides = family.overrides(ckpt.config)
    tie = tied(family, ckpt)
    return family, tie, [*overrides, f"model.tie_embeddings={str(tie).lower()}"]


def compose_for(ckpt: HFCheckpoint, overrides: Sequence[str] = ()) -> tuple[Family, bool, list[str], DictConfig]:
    """The composed config of a checkpoint, with ``overrides`` on top (they win over the checkpoint's)."""
    from zoo.config import compose

    family, tie, base = hf_overrides(ckpt)
    merged = merge_overrides(base, list(overrides))
    return family, tie, merged, compose(merged)


def import_config(source: Source, *, overrides: Sequence[str] = ()) -> DictConfig:
    """The zoo config (``cfg.model`` builds the model) of a checkpoint folder or ``transformers`` model."""
    return compose_for(read(source), overrides)[3]


def from_pretrained(
    source: Source,
    *,
    overrides: Sequence[str] = (),
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    strict: bool = True,
    with_config: bool = False,
) -> "torch.nn.Module | tuple[torch.nn.Module, DictConfig]":
    """A zoo model with the weights of a Hugging Face checkpoint.

    Args:
        source: a local checkpoint folder, or a ``transformers`` ``PreTrainedModel``.
        overrides: Hydra overrides on top of the checkpoint's composition (an ablation, a kernel).
        device: where to build the model.
        dtype: cast the model to it (weights load in the model's float32 first).
        strict: every parameter must come from the checkpoint; ``False`` lets parameters that
            ``overrides`` added keep their init (shapes must still agree).
        with_config: also return the composed config (what :func:`save_pretrained` needs).

    Returns: the model in eval mode, or ``(model, config)`` with ``with_config``.
    """
    cfg, model, _ = _build(read(source), overrides, device=device, dtype=dtype, strict=strict)
    return (model, cfg) if with_config else model


def _build(ckpt: HFCheckpoint, overrides: Sequence[str], *, device=None, dtype=None, strict: bool = True):
    from zoo.config import instantiate_model

    family, tie, merged, cfg = compose_for(ckpt, overrides)
    model = instantiate_model(cfg.model, device=device)
    state = to_zoo(family, ckpt, tie=tie)
    if not strict:
        own = model.state_dict()
        state = {k: v for k, v in state.items() if k in own}
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        if not overrides:
            raise
        detail = str(e).splitlines()[1].strip()[:300]
        raise ConfigError(
            "overrides",
            list(overrides),
            f"the composition no longer fits the checkpoint ({detail}): overrides may add parameters (strict=False keeps "
            "their init) but not change shapes; choosing another option of a slot drops the checkpoint's settings of that "
            "slot, so set them again (e.g. model.attention.n_kv_heads) or override values only (model.attention.window=8)",
        ) from None
    model = model.to(dtype) if dtype is not None else model
    return cfg, model.eval(), merged


def convert(source: Source, out: str | Path, *, overrides: Sequence[str] = (), dtype: torch.dtype | None = None) -> Path:
    """Write a checkpoint as a zoo folder: ``config.yaml`` (the composition) and ``model.safetensors``.

    ``config.yaml`` is the composed config (without Hydra's own node); its header lists the overrides
    that compose it from zoo's ``conf/``. :func:`load` reads the folder back.
    """
    from safetensors.torch import save_model

    ckpt = read(source)
    cfg, model, merged = _build(ckpt, overrides, dtype=dtype)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=False)
    config.pop("hydra", None)
    header = f"# zoo composition of {ckpt.source}, written by zoo-import; the same as composing:\n"
    header += "".join(f"#   {o}\n" for o in merged)
    (out / "config.yaml").write_text(header + OmegaConf.to_yaml(OmegaConf.create(config)))
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def load(folder: str | Path, *, device: torch.device | str | None = None) -> torch.nn.Module:
    """The model of a folder :func:`convert` wrote, in eval mode; its ``config.yaml`` may name only
    zoo's classes and its weights load with safetensors (docs/security.md)."""
    from zoo.config import instantiate_model
    from zoo.run.checkpoint import CONFIG, Checkpoint, load_weights

    checkpoint = Checkpoint(path=Path(folder), state={})
    cfg = checkpoint.config()
    model = instantiate_model(cfg.model, device=device, source=str(checkpoint.path / CONFIG))
    try:
        load_weights(checkpoint, model, device=str(device or "cpu"))
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError("folder", str(folder), f"weights that fit its config.yaml ({e})") from None
    return model.eval()


def export_family(model_cfg: DictConfig) -> tuple[Family, dict]:
    """The first family whose layout the composition ``model_cfg`` matches, and its ``config.json`` keys."""
    reasons = []
    for family in FAMILIES:
        try:
            expect_features(model_cfg, family)
            return family, {**family.export_config(model_cfg), **family.export_layers(model_cfg)}
        except ConfigError as e:
            reasons.append(f"{family.hf_class}: {e}")
    raise ConfigError("model", model_cfg.get("_target_"), "matches no transformers family: " + "; ".join(reasons))


def save_pretrained(model: torch.nn.Module, folder: str | Path, *, config: DictConfig) -> Path:
    """Write ``model`` as a Hugging Face checkpoint folder (``config.json``, ``model.safetensors``).

    Args:
        model: a zoo model.
        folder: where to write; created if missing.
        config: the composed config that built ``model`` (the whole config, or its ``model`` node).

    Returns: ``folder``, which ``transformers``' ``AutoModelFor*.from_pretrained`` loads.
    """
    import json

    from safetensors.torch import save_file

    model_cfg = config.model if "model" in config else config
    family, hf_config = export_family(model_cfg)
    tie = bool(model_cfg.get("tie_embeddings", True))
    weights = to_hf(family, hf_config, model.state_dict(), tie=tie)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    hf_config = {
        "architectures": [family.hf_class],
        "model_type": family.model_types[0],
        **hf_config,
        "tie_word_embeddings": tie,
        "dtype": dtype,
        "torch_dtype": dtype,  # transformers 4.x
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


__all__ = ["from_pretrained", "import_config", "convert", "load", "save_pretrained", "hf_overrides", "FAMILIES"]
