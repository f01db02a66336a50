"""``zoo-generate``: generate text from a composed model or a training checkpoint (a Hydra app).

The library lives in :mod:`zoo.generation` and is re-exported here (``zoo.generate.generate``);
Hydra, safetensors and the tokenizers are imported only when the command runs.

    zoo-generate prompt="def main(" max_new_tokens=64 temperature=0.8 top_p=0.95
    zoo-generate checkpoint=outputs/2026-01-01_00-00-00 'draft.overrides=["model.n_layers=1"]'
    zoo-generate model.n_layers=6 'draft.overrides="model.n_layers=1 model/attention=mqa"'
"""

import sys
import time
from pathlib import Path

import torch

from zoo.errors import ConfigError
from zoo.generation import Generation, generate, speculative_generate

#: the keys of a composition that choose the model (``model.dim=..``, ``model/ffn=..``, ``preset=..``)
MODEL_KEYS = ("model", "preset")


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder at ``path``: itself, or what ``latest.json`` (of it or of its
    ``checkpoints/``) points at, as zoo-train writes them."""
    import json

    folder = Path(path).expanduser()
    for root in (folder, folder / "checkpoints"):
        if (root / "latest.json").exists():
            folder = root / json.loads((root / "latest.json").read_text())["path"]
            break
    if not (folder / "model.safetensors").exists():
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        why = f"found only {pickles}: zoo loads safetensors only, never pickles" if pickles else "no model.safetensors there"
        raise ConfigError("checkpoint", str(path), f"a checkpoint folder with model.safetensors and config.yaml ({why})")
    if not (folder / "config.yaml").exists():
        raise ConfigError("checkpoint", str(path), "a checkpoint folder with its config.yaml (the run's resolved config)")
    return folder


def load_checkpoint(path: str | Path, *, device: torch.device, overrides=()) -> tuple[torch.nn.Module, object]:
    """``(model, tokenizer)`` of a checkpoint folder; ``overrides`` (``model.key=value``) change its config
    first (a draft built from a target's checkpoint)."""
    from omegaconf import OmegaConf
    from safetensors.torch import load_model

    from zoo.config import instantiate_model
    from zoo.tokenizer import META_FILE, load_tokenizer

    folder = resolve_checkpoint(path)
    cfg = OmegaConf.load(folder / "config.yaml")
    model_cfg = cfg.model if "model" in cfg else cfg
    tokenizer = None
    for where in (folder / "tokenizer", folder):
        if (where / META_FILE).exists():
            tokenizer = load_tokenizer(where)
            break
    if overrides:
        model_cfg = apply_dotted(model_cfg, overrides)
        model = instantiate_model(model_cfg, device=device)
        return model, tokenizer
    model = instantiate_model(model_cfg, device=device)
    missing, unexpected = load_model(model, str(folder / "model.safetensors"), strict=False, device=str(device))
    if missing or unexpected:
        raise ConfigError("checkpoint", str(path), f"weights that fit its config.yaml: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    return model, tokenizer


def apply_dotted(model_cfg, overrides):
    """``model.key=value`` overrides merged into a resolved model config (no config groups there)."""
    from omegaconf import OmegaConf

    dotted = []
    for o in overrides:
        key = o.split("=", 1)[0]
        if "/" in key or not key.startswith("model.") or "=" not in o:
            raise ConfigError("draft.overrides", o, "model.<key>=<value> (a checkpoint's config is resolved: config groups cannot change)")
        dotted.append(o[len("model.") :])
    return OmegaConf.merge(model_cfg, OmegaConf.from_dotlist(dotted))


def compose_model(overrides: list[str]):
    """The model config of ``overrides`` composed over ``generate.yaml`` (inside the running app or not)."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        from hydra import compose

        return compose(config_name="generate", overrides=overrides).model
    from zoo.config import compose as zoo_compose

    return zoo_compose(overrides, config_name="generate").model


def model_overrides(task_overrides: list[str]) -> list[str]:
    """The overrides of a command line that choose the model (so a draft can start from them)."""
    return [o for o in task_overrides if o.lstrip("+~").split("=", 1)[0].split(".", 1)[0].split("/", 1)[0] in MODEL_KEYS]


def build_models(cfg, *, task_overrides: list[str]) -> tuple[torch.nn.Module, torch.nn.Module | None, object]:
    """``(model, draft or None, tokenizer)`` as ``cfg`` asks."""
    from omegaconf import OmegaConf

    from zoo.config import instantiate_model
    from zoo.tokenizer import ByteTokenizer

    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    if cfg.checkpoint:
        model, tokenizer = load_checkpoint(cfg.checkpoint, device=device)
        if tokenizer is None:
            print("zoo-generate: the checkpoint has no tokenizer/: reading UTF-8 bytes", file=sys.stderr)
            tokenizer = ByteTokenizer()
    else:
        tokenizer = ByteTokenizer()
        model_cfg = OmegaConf.merge(cfg.model, {"vocab_size": tokenizer.vocab_size})
        model = instantiate_model(model_cfg, device=device)
    if model.vocab_size < tokenizer.vocab_size:
        raise ConfigError("checkpoint", cfg.checkpoint, f"a tokenizer of at most model.vocab_size={model.vocab_size} ids, got {tokenizer.vocab_size}")
    draft = None
    d = cfg.draft
    if d.checkpoint:
        draft, _ = load_checkpoint(d.checkpoint, device=device)
    elif d.overrides:
        # a list, or one quoted string of space-separated overrides (Hydra needs '=' inside a value quoted)
        overrides = str(d.overrides).split() if isinstance(d.overrides, str) else [str(o) for o in d.overrides]
        if cfg.checkpoint:
            draft, _ = load_checkpoint(cfg.checkpoint, device=device, overrides=overrides)
        else:
            draft_cfg = OmegaConf.merge(compose_model([*model_overrides(task_overrides), *overrides]), {"vocab_size": tokenizer.vocab_size})
            draft = instantiate_model(draft_cfg, device=device)
    return model, draft, tokenizer


def run(cfg, *, task_overrides: list[str] = ()) -> tuple[str, Generation, float]:
    """Generate as ``cfg`` (``conf/generate.yaml``) asks and print the text and tokens/s.

    Returns: ``(text, generation, seconds)``.
    """
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    model, draft, tokenizer = build_models(cfg, task_overrides=list(task_overrides))
    if not getattr(model, "can_generate", False):
        model.new_cache()  # the encoder-only ConfigError
    encdec = hasattr(model, "encode")
    prompt = tokenizer.encode(cfg.prompt)
    if cfg.get("chat"):  # the prompt is a user's message; the model answers as the assistant
        from zoo.finetune.chat import ChatTemplate

        prompt = ChatTemplate(tokenizer).prompt([{"role": "user", "content": cfg.prompt}])
    if encdec:
        prompt = [*prompt, tokenizer.eos_id]  # a source ends with <eos>, as span corruption writes it
    prompt = prompt or [tokenizer.bos_id]
    eos = tokenizer.eos_id if cfg.stop_at_eos else None
    start = time.perf_counter()
    out = generate(
        model, [prompt], max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
        eos_id=eos, pad_id=tokenizer.pad_id, start_id=tokenizer.bos_id, seed=cfg.seed, draft=draft, n_draft=cfg.draft.n_draft,
    )
    seconds = time.perf_counter() - start
    new = out.tokens[0]
    text = tokenizer.decode(new[:-1] if new and new[-1] == eos else new)
    if encdec:
        print(f"source: {cfg.prompt}\noutput: {text}")
    else:
        print(cfg.prompt + text)
    stats = f"[{len(new)} new tokens in {seconds:.2f} s: {len(new) / max(seconds, 1e-9):.1f} tokens/s"
    if out.acceptance_rate is not None:
        stats += f"; draft acceptance {out.acceptance_rate:.2f} ({out.accepted}/{out.drafted}, n_draft={cfg.draft.n_draft})"
    print(stats + "]")
    return text, out, seconds


def _app(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    try:
        run(cfg, task_overrides=list(HydraConfig.get().overrides.task))
    except ConfigError as e:
        print(f"zoo-generate: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """The console script ``zoo-generate`` (Hydra over ``conf/generate.yaml``)."""
    import hydra

    from zoo.config import register_plugins

    register_plugins()
    hydra.main(config_path="pkg://zoo.conf", config_name="generate", version_base="1.3")(_app)()


__all__ = ["main", "run", "generate", "speculative_generate", "Generation", "load_checkpoint", "resolve_checkpoint"]

if __name__ == "__main__":
    main()
