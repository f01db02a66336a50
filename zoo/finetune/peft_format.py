"""LoRA adapters in PEFT's on-disk format, for the ``zoo.hf.save_pretrained`` export of their base model.

PEFT's format is a folder with ``adapter_config.json`` and ``adapter_model.safetensors`` whose keys are
``base_model.model.<transformers module name>.lora_A.weight`` (and ``lora_B``). zoo's adapted layers
are mapped to transformers' names by the same family rules the export uses; a layer the family stores
fused or transposed (GPT-2's ``c_attn``, BLOOM's ``query_key_value``) has no one-to-one counterpart and
is refused by name. Written with json and safetensors: ``peft`` is not needed to write it.
"""

import json
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from zoo.errors import ConfigError
from zoo.finetune.lora import LoRA, LoRALinear

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


def hf_names(model: nn.Module, model_cfg: DictConfig) -> dict[str, str]:
    """``{zoo parameter name: transformers name}`` for every tensor the export copies unchanged.

    Each of ``model``'s tensors is replaced by a distinct random marker and sent through the family's
    export rules; a marker that comes out whole and unchanged names its tensor's counterpart.
    """
    from zoo.hf import export_family
    from zoo.hf.convert import to_hf

    family, hf_config = export_family(model_cfg)
    g = torch.Generator().manual_seed(0)
    state = {k: v for k, v in model.state_dict().items() if ".lora_" not in k}
    markers = {k: torch.randn(v.shape, generator=g) for k, v in state.items()}
    tie = bool(model_cfg.get("tie_embeddings", True))
    if tie:
        markers["lm_head.weight"] = markers["embed.weight"]
    out = to_hf(family, hf_config, markers, tie=tie)
    by_shape: dict[tuple, list[str]] = {}
    for name, tensor in out.items():
        by_shape.setdefault(tuple(tensor.shape), []).append(name)
    names = {}
    for zoo_name, marker in markers.items():
        match = [h for h in by_shape.get(tuple(marker.shape), []) if torch.equal(out[h], marker)]
        if match:
            names[zoo_name] = match[0]
    return names


def save_adapter(model: nn.Module, folder: str | Path, *, model_cfg: DictConfig, adapter: LoRA) -> Path:
    """Write ``model``'s LoRA layers as a PEFT adapter of the model ``zoo.hf.save_pretrained`` exports.

    Args:
        model: a zoo model with :class:`LoRALinear` layers.
        folder: the adapter folder; created if missing.
        model_cfg: the composed ``model`` node (it picks the transformers family).
        adapter: the :class:`LoRA` settings the layers were built with.
    """
    from safetensors.torch import save_file

    names = hf_names(model, model_cfg)
    tensors, targets = {}, []
    for name, module in model.named_modules():
        if not isinstance(module, LoRALinear):
            continue
        hf = names.get(f"{name}.weight")
        if hf is None:
            raise ConfigError("adapter.targets", name, "a layer the transformers export keeps whole and untransposed (this family fuses or transposes it): adapt other layers to export to PEFT")
        module_name = hf.removesuffix(".weight")
        targets.append(module_name)
        for part in ("lora_A", "lora_B"):
            tensors[f"{PREFIX}{module_name}.{part}.weight"] = getattr(module, part).weight.detach().cpu().contiguous()
    if not tensors:
        raise ConfigError("adapter", "none", "a model with LoRA layers (adapter=lora)")
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": adapter.rank, "lora_alpha": adapter.alpha, "lora_dropout": adapter.dropout,
        "target_modules": sorted(targets), "bias": "none", "fan_in_fan_out": False, "modules_to_save": None, "inference_mode": True,
        "base_model_name_or_path": None, "init_lora_weights": True, "use_rslora": False, "use_dora": False,
    }  # fmt: skip
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    return folder
