"""``python -m zoo.finetune.merge RUN OUT [--hf] [--peft]``: a fine-tuning run as a whole model.

A run whose body was frozen (``adapter=lora``, ``adapter=frozen``) checkpoints only what trained; its
base comes from the run's ``trainer.init_from``. This rebuilds the run's model (base, adapter, task
head, trained tensors), folds the adapter into the base weights, and writes

- ``OUT/config.yaml``, ``OUT/model.safetensors``, ``OUT/tokenizer/``: a folder ``zoo-generate
  checkpoint=OUT`` and ``trainer.init_from=OUT`` read;
- with ``--hf``: ``OUT/hf/``, the merged model as a Hugging Face checkpoint (``zoo.hf.save_pretrained``);
- with ``--peft``: ``OUT/base_hf/`` (the base model, unmerged) and ``OUT/peft/`` (the adapter in PEFT's
  format), so ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(OUT/base_hf), OUT/peft)``
  gives the run's logits.
"""

import argparse
import copy
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from zoo.errors import ConfigError


def load_run(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, DictConfig, object, object]:
    """``(model, config, tokenizer, adapter)`` of a training checkpoint, adapters still apart.

    ``path`` is a run folder, its ``checkpoints/`` or a ``step_*`` folder.
    """
    from zoo.config import instantiate_model
    from zoo.finetune.adapters import FullFineTuning
    from zoo.finetune.pretrained import _tokenizer, open_pretrained
    from zoo.run.checkpoint import find, load_weights
    from zoo.train import build_node

    try:
        found = find(path)
    except FileNotFoundError as e:
        raise ConfigError("run", str(path), str(e)) from None
    cfg = OmegaConf.load(found.path / "config.yaml")
    tokenizer = _tokenizer(found.path)
    torch.manual_seed(0)
    model = instantiate_model(cfg.model, device=device)
    init_from = OmegaConf.select(cfg, "trainer.init_from", default=None)
    if init_from:
        open_pretrained(init_from).load_into(model, strict=bool(OmegaConf.select(cfg, "trainer.init_strict", default=True)))
    adapter = build_node(cfg.adapter, "adapter") if "adapter" in cfg else FullFineTuning()
    adapter.apply(model)
    build_node(cfg.objective, "objective", tokenizer=tokenizer).prepare(model, data=None)
    try:
        load_weights(found, model)
    except (ValueError, RuntimeError) as e:
        raise ConfigError("run", str(path), f"a checkpoint that fits its own config.yaml ({str(e).splitlines()[0]})") from None
    return model.eval(), cfg, tokenizer, adapter


def write_zoo_folder(model: torch.nn.Module, out: Path, *, cfg: DictConfig, tokenizer) -> Path:
    """``config.yaml`` (the run's config with no adapter), ``model.safetensors`` and ``tokenizer/``."""
    from safetensors.torch import save_model

    out.mkdir(parents=True, exist_ok=True)
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["adapter"] = {"_target_": "zoo.finetune.adapters.FullFineTuning"}
    plain.setdefault("trainer", {})["init_from"] = None
    (out / "config.yaml").write_text(f"# merged by python -m zoo.finetune.merge from a run started at {cfg.trainer.get('init_from')}\n" + OmegaConf.to_yaml(plain))
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(out / "tokenizer")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.finetune.merge", description=__doc__.split("\n")[0].replace("``", ""))
    parser.add_argument("run", help="a zoo-train run folder, its checkpoints/ or a step_* folder")
    parser.add_argument("out", help="folder to write the merged model to")
    parser.add_argument("--hf", action="store_true", help="also OUT/hf: the merged model as a Hugging Face checkpoint")
    parser.add_argument("--peft", action="store_true", help="also OUT/base_hf and OUT/peft: the base model and the adapter in PEFT's format")
    args = parser.parse_args(argv)
    from zoo.hf import save_pretrained

    out = Path(args.out)
    try:
        model, cfg, tokenizer, adapter = load_run(args.run)
        if (args.hf or args.peft) and OmegaConf.select(cfg, "objective.n_classes"):  # trained with a classification head
            raise ConfigError("--hf/--peft", args.run, "a language model: a classification head has no transformers counterpart here")
        if args.peft:
            from zoo.finetune.peft_format import save_adapter

            save_adapter(model, out / "peft", model_cfg=cfg.model, adapter=adapter)
            save_pretrained(adapter.unload(copy.deepcopy(model)), out / "base_hf", config=cfg.model)
        merged = adapter.merge(model)
        write_zoo_folder(merged, out, cfg=cfg, tokenizer=tokenizer)
        if args.hf:
            save_pretrained(merged, out / "hf", config=cfg.model)
    except ConfigError as e:
        print(f"zoo.finetune.merge: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
