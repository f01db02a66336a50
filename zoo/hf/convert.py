"""Weights between a checkpoint's names and a zoo model's, both ways, and the family registry.

Every conversion is total: a checkpoint tensor no rule uses, or a zoo tensor no rule fills, is an
error naming it, so a model never runs with a part silently missing or left at its random init.
"""

import torch

from zoo.errors import ConfigError
from zoo.hf.bloom import Bloom
from zoo.hf.checkpoint import HFCheckpoint
from zoo.hf.deepseek_v3 import DeepseekV3
from zoo.hf.falcon import Falcon
from zoo.hf.family import Family, rename
from zoo.hf.gemma import Gemma, Gemma2, Gemma3
from zoo.hf.gpt2 import GPT2
from zoo.hf.gpt_neox import GPTNeoX
from zoo.hf.llama import Llama
from zoo.hf.mistral import Mistral
from zoo.hf.mixtral import Mixtral
from zoo.hf.olmo2 import Olmo2
from zoo.hf.qwen2 import Qwen2
from zoo.hf.qwen3 import Qwen3
from zoo.hf.t5 import T5

#: every mapped family, in the order export tries them
FAMILIES: tuple[Family, ...] = (Llama(), Mistral(), Qwen2(), Qwen3(), Olmo2(), Gemma(), Gemma2(), Gemma3(), Mixtral(), DeepseekV3(), GPT2(), Bloom(), GPTNeoX(), Falcon(), T5())


def family_for(config: dict) -> Family:
    """The family of a checkpoint's ``config.json``, by its ``model_type``."""
    model_type = config.get("model_type")
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES for t in f.model_types)
    raise ConfigError("hf_config.model_type", model_type, f"zoo maps these transformers families: {known}")


def hf_weights(family: Family, ckpt: HFCheckpoint) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the names the family's rules use.

    A checkpoint of the bare base model lacks the base prefix (the hub's ``gpt2``); an in-memory
    ``transformers`` 5 model may name or fuse tensors otherwise than its checkpoints do.
    """
    weights, prefix = family.canonical(ckpt.weights), family.base_prefix
    if not prefix or any(name.startswith(prefix) for name in weights):
        return weights
    return {name if name == family.head else prefix + name: w for name, w in weights.items()}


def tied(family: Family, ckpt: HFCheckpoint) -> bool:
    """Whether the LM head is the embedding, as ``transformers`` decides when loading.

    ``tie_word_embeddings`` says so, unless the checkpoint holds a head that differs from the
    embedding: ``transformers`` then keeps both (and warns), and so does zoo.
    """
    weights = hf_weights(family, ckpt)
    tie = bool(ckpt.config.get("tie_word_embeddings", family.tie_default))
    head, embed = weights.get(family.head), weights.get(family.embed)
    if head is None:
        if not tie:
            raise ConfigError("hf_config.tie_word_embeddings", False, f"the checkpoint has no {family.head}: an untied head needs its weights")
        return True
    return tie and embed is not None and torch.equal(head, embed)


def to_zoo(family: Family, ckpt: HFCheckpoint, *, tie: bool) -> dict[str, torch.Tensor]:
    """The checkpoint's weights under the zoo model's ``state_dict`` names."""
    weights = hf_weights(family, ckpt)
    rules = family.rules(ckpt.config) + ([] if tie else [rename(family.head, "lm_head.weight")])
    missing = [name for rule in rules for name in rule.hf if name not in weights]
    if missing:
        raise ConfigError("weights", missing[:4], f"{len(missing)} tensors of the {family.hf_class} layout are not in {ckpt.source}")
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for rule in rules:
        out.update(zip(rule.zoo, rule.to_zoo(*(weights[name] for name in rule.hf)), strict=True))
        used.update(rule.hf)
    copies = {**family.aliases(ckpt.config), **({family.head: family.embed} if tie else {})}
    for copy, original in copies.items():
        if copy in weights:
            if not torch.equal(weights[copy], weights[original]):
                raise ConfigError("weights", copy, f"must equal {original}, which the model shares in its place")
            used.add(copy)
    if tie:
        out["lm_head.weight"] = out["embed.weight"]
    unused = [name for name in weights if name not in used and not name.endswith(family.buffers) and not family.skipped(ckpt.config, name)]
    if unused:
        raise ConfigError("weights", unused[:4], f"{len(unused)} checkpoint tensors have no place in the zoo composition")
    return out


def to_hf(family: Family, hf_config: dict, state: dict[str, torch.Tensor], *, tie: bool) -> dict[str, torch.Tensor]:
    """A zoo model's ``state_dict`` under the checkpoint names of ``family`` (the head left out when tied)."""
    rules = family.rules(hf_config) + ([] if tie else [rename(family.head, "lm_head.weight")])
    missing = [name for rule in rules for name in rule.zoo if name not in state]
    if missing:
        raise ConfigError("model", missing[:4], f"the composition lacks {len(missing)} tensors of the {family.hf_class} layout")
    out: dict[str, torch.Tensor] = {}
    used = {"lm_head.weight"} if tie else set()
    for rule in rules:
        out.update(zip(rule.hf, rule.to_hf(*(state[name] for name in rule.zoo)), strict=True))
        used.update(rule.zoo)
    unused = [name for name in state if name not in used]
    if unused:
        raise ConfigError("model", unused[:4], f"{len(unused)} tensors of the model have no place in {family.hf_class}")
    # safetensors wants each tensor contiguous and in its own storage
    return {name: w.detach().clone().contiguous() for name, w in out.items()}


def override_key(override: str) -> str:
    """``model.dim`` of ``model.dim=64``, ``model/ffn`` of ``++model/ffn=gelu``."""
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(base: list[str], extra: list[str]) -> list[str]:
    """``base`` with ``extra`` on top: an override of the same key replaces the base one.

    Choosing another option of a slot (``model/pos=alibi``) also drops the base's settings of that
    slot (``model.pos.theta``), which the new option may not have.
    """
    merged = list(base)
    for override in extra:
        key = override_key(override)
        node = key.replace("/", ".") + "." if "/" in key else None
        merged = [o for o in merged if override_key(o) != key and not (node and override_key(o).startswith(node))]
        merged.append(override)
    return merged
