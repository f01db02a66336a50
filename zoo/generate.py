"""``zoo-generate``: generate text from a composed model or a training checkpoint (a Hydra app).

The library lives in :mod:`zoo.generation` and is re-exported here (``zoo.generate.generate``);
Hydra, safetensors and the tokenizers are imported only when the command runs.

    zoo-generate 'prompt="def main("' max_new_tokens=64 temperature=0.8 top_p=0.95
    zoo-generate checkpoint=outputs/target prompt_file=prompt.py
    zoo-generate checkpoint=outputs/target draft.checkpoint=outputs/draft     # speculative
    zoo-generate model.n_layers=6 'draft.overrides="model.n_layers=1 model/attention=mqa"'  # random weights: a smoke test
    zoo-generate checkpoint=outputs/glm 'prompt="x = f(a, <mask>) + 1"'          # GLM: fill the blank

A prompt is any text: Hydra parses what follows ``prompt=``, so text with parentheses, quotes, ``=``
or spaces goes in double quotes inside the shell's single quotes (``'prompt="f(a=1)"'``; a ``"``
inside is written ``\"``), or in a file (``prompt_file=``), read verbatim.

A prompt holding blanks, written ``<mask>``, is filled from the text on both sides by a model trained
with ``model=prefix objective=blank_infilling`` (GLM, arXiv:2103.10360; ``infill=``): the output is the
prompt with a span in each blank, written in the blanks' order. A checkpoint's prompt without a blank is
continued as its objective reads a text whose end is missing (a GLM model: behind a blank at its end).
"""

import sys
import time
from pathlib import Path

import torch

from zoo.errors import ConfigError
from zoo.generation import Generation, generate, speculative_generate
from zoo.generation.healing import TextPrompt, encode_prompt
from zoo.generation.infill import split_spans

#: the keys of a composition that choose the model (``model.dim=..``, ``model/ffn=..``, ``preset=..``)
MODEL_KEYS = ("model", "preset")


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder at ``path`` (:func:`zoo.run.checkpoint.find`: itself, or what ``latest.json``
    of it or of its ``checkpoints/`` points at); it must hold ``model.safetensors`` and ``config.yaml``."""
    from zoo.run.checkpoint import CONFIG, MODEL, TRAINABLE, find

    try:
        folder = find(path).path
    except FileNotFoundError as e:
        raise ConfigError("checkpoint", str(path), f"a checkpoint folder with {MODEL} and {CONFIG} ({e})") from None
    if not (folder / MODEL).exists() and (folder / TRAINABLE).exists():
        raise ConfigError("checkpoint", str(path), f"a whole model: this checkpoint holds only what trained (an adapter); merge it first with `python -m zoo.finetune.merge {path} OUT` and use OUT")
    for name in (MODEL, CONFIG):
        if not (folder / name).exists():
            raise ConfigError("checkpoint", str(path), f"a checkpoint folder with {MODEL} and {CONFIG} (no {name} in {folder})")
    return folder


def load_checkpoint(path: str | Path, *, device: torch.device, overrides=()) -> tuple[torch.nn.Module, object]:
    """``(model, tokenizer)`` of a checkpoint folder; ``overrides`` (``model.key=value``) change its config
    first (a draft built from a target's checkpoint). Nothing in the folder chooses code: its config's
    targets and its tokenizer's class are checked against allowlists first (docs/security.md)."""
    from zoo.config import instantiate_model
    from zoo.run.checkpoint import CONFIG, find, load_weights

    checkpoint = find(resolve_checkpoint(path))
    cfg = checkpoint.config()
    model_cfg = cfg.model if "model" in cfg else cfg
    source = str(checkpoint.path / CONFIG)
    tokenizer = checkpoint.tokenizer()
    if overrides:
        model_cfg = apply_dotted(model_cfg, overrides)
        return instantiate_model(model_cfg, device=device, source=source), tokenizer
    model = instantiate_model(model_cfg, device=device, source=source)
    try:
        load_weights(checkpoint, model, device=str(device))
    except ConfigError:  # a damaged file names itself
        raise
    except ValueError as e:
        raise ConfigError("checkpoint", str(path), f"weights that fit its config.yaml ({e})") from None
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


def generation_dtype(cfg) -> torch.dtype:
    """What the weights and KV cache hold while generating (``dtype=``)."""
    from zoo.config import DTYPES

    name = cfg.get("dtype") or "float32"
    if name not in DTYPES:
        raise ConfigError("dtype", name, f"one of {', '.join(DTYPES)}")
    return DTYPES[name]


def build_models(cfg, *, task_overrides: list[str]) -> tuple[torch.nn.Module, torch.nn.Module | None, object]:
    """``(model, draft or None, tokenizer)`` as ``cfg`` asks, in its ``dtype``."""
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
    dtype = generation_dtype(cfg)
    draft = build_draft(cfg, model=model, tokenizer=tokenizer, task_overrides=task_overrides)
    return model.to(dtype), draft if draft is None else draft.to(dtype), tokenizer


def build_draft(cfg, *, model: torch.nn.Module, tokenizer, task_overrides: list[str]) -> torch.nn.Module | None:
    """The speculative draft ``cfg.draft`` asks for, or ``None``.

    A draft speeds decoding up only if it guesses the target's tokens, so it must be trained, on the
    same tokenizer: ``draft.checkpoint``, a smaller model trained by ``zoo-train``. ``draft.overrides``
    builds a model with random weights; it is accepted only next to a target with random weights (no
    ``checkpoint``: a smoke test of the decoding loop, said so on stderr) and refused next to a trained one.
    """
    from omegaconf import OmegaConf

    from zoo.config import instantiate_model
    from zoo.tokenizer import ByteTokenizer

    check_draft(cfg)
    d = cfg.draft
    if d.checkpoint:
        draft, draft_tokenizer = load_checkpoint(d.checkpoint, device=torch.device(cfg.device))
        draft_tokenizer = draft_tokenizer or ByteTokenizer()  # as for the target
        if draft_tokenizer.id != tokenizer.id or draft.vocab_size != model.vocab_size:
            raise ConfigError(
                "draft.checkpoint", str(d.checkpoint),
                f"a model trained with the target's tokenizer ({tokenizer.id}, {model.vocab_size} ids; it has {draft_tokenizer.id}, {draft.vocab_size} ids)",
            )  # fmt: skip
        return draft
    if not d.overrides:
        return None
    # a list, or one quoted string of space-separated overrides (Hydra needs '=' inside a value quoted)
    overrides = str(d.overrides).split() if isinstance(d.overrides, str) else [str(o) for o in d.overrides]
    print("zoo-generate: target and draft have random weights (no checkpoint): a smoke test of speculative decoding, not a speed-up", file=sys.stderr)
    draft_cfg = OmegaConf.merge(compose_model([*model_overrides(task_overrides), *overrides]), {"vocab_size": tokenizer.vocab_size})
    return instantiate_model(draft_cfg, device=torch.device(cfg.device))


def check_draft(cfg) -> None:
    """Refuse, before any model is built, a draft that cannot help: both kinds at once, or random
    weights (``draft.overrides``) next to a trained target; or a draft next to ``compiled=true``."""
    d = cfg.draft
    if d.checkpoint and d.overrides:
        raise ConfigError("draft.overrides", str(d.overrides), "null when draft.checkpoint is set (a draft is one or the other)")
    if cfg.get("compiled") and (d.checkpoint or d.overrides):
        raise ConfigError("compiled", True, "false or null with a draft (speculative decoding runs on the eager KV cache)")
    if d.overrides and cfg.checkpoint:
        raise ConfigError(
            "draft.overrides", str(d.overrides),
            "null next to a trained checkpoint: a draft built from overrides has random weights and can never speed it up; "
            "train a small draft on the same data (zoo-train model.n_layers=1 ...) and pass draft.checkpoint=<its run folder>",
        )  # fmt: skip


def prompt_text(cfg) -> str:
    """The text to continue: ``prompt_file``'s contents, verbatim, when it is set; else ``prompt``."""
    if cfg.get("prompt_file"):
        path = Path(str(cfg.prompt_file)).expanduser()
        if not path.is_file():
            raise ConfigError("prompt_file", str(cfg.prompt_file), "a text file to read the prompt from")
        return path.read_text(encoding="utf-8")
    # Hydra reads an unquoted number or bool as one: the prompt is its text
    return "" if cfg.prompt is None else str(cfg.prompt)


def infills(cfg, text: str) -> bool:
    """Whether to fill a blank in ``text`` (``infill``; ``null``: when it holds one), refusing, before
    any model is built, a blank that cannot be filled as asked."""
    from zoo.tokenizer import MASK_TOKEN

    if cfg.get("infill") not in (None, True, False):
        raise ConfigError("infill", cfg.infill, f"true (fill the prompt's blank {MASK_TOKEN}), false (continue the prompt) or null (fill when it holds one)")
    blanks = text.count(MASK_TOKEN)
    if not (blanks > 0 if cfg.get("infill") is None else cfg.infill):
        return False
    if blanks == 0:
        raise ConfigError("infill", cfg.infill, f"a prompt holding the blank to fill, written {MASK_TOKEN}; or false to continue the prompt")
    if blanks > 1 and not cfg.stop_at_eos:
        raise ConfigError("stop_at_eos", False, f"true when the prompt holds {blanks} blanks {MASK_TOKEN}: [E] ends each span and begins the next")
    if cfg.get("chat"):
        raise ConfigError("chat", True, f"false when filling a blank {MASK_TOKEN} (infill): the prompt is the text around it")
    if cfg.get("compiled"):
        raise ConfigError("compiled", True, f"false or null when filling a blank {MASK_TOKEN} (infill): it decodes on the eager KV cache")
    return True


def run(cfg, *, task_overrides: list[str] = ()) -> tuple[str, Generation, float]:
    """Generate as ``cfg`` (``conf/generate.yaml``) asks and print the text and tokens/s.

    Returns: ``(text, generation, seconds)``; ``text`` is the new text (a filled blank's span).
    """
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    text_in = prompt_text(cfg)  # a missing prompt_file fails before any model is built
    generation_dtype(cfg)  # as does a dtype it does not know
    infilling = infills(cfg, text_in)
    check_draft(cfg)
    model, draft, tokenizer = build_models(cfg, task_overrides=list(task_overrides))
    if not getattr(model, "can_generate", False):
        model.new_cache()  # the encoder-only ConfigError
    if infilling:
        return run_infill(cfg, text_in, model=model, draft=draft, tokenizer=tokenizer)
    if cfg.get("chat"):  # the prompt is a user's message; the model answers as the assistant
        from zoo.finetune.chat import ChatTemplate

        prompt = TextPrompt(ids=ChatTemplate(tokenizer).prompt([{"role": "user", "content": text_in}]), text=text_in)
    elif not model.continues_prompt:  # a source ends with <eos>, as span corruption writes it
        prompt = TextPrompt(ids=[*tokenizer.encode(text_in), tokenizer.eos_id], text=text_in)
    else:
        prompt = encode_prompt(tokenizer, text_in, heal=cfg.get("heal", True))
    ids, how = continue_as_trained(cfg, tokenizer, prompt.ids) if model.continues_prompt and not cfg.get("chat") else (prompt.ids, {})
    end = how.pop("eos_id", tokenizer.eos_id)  # a GLM span ends with [E]
    eos = end if cfg.stop_at_eos else None
    start = time.perf_counter()
    out = generate(
        model, [ids], max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
        eos_id=eos, seed=cfg.seed, draft=draft, n_draft=cfg.draft.n_draft, compiled=cfg.get("compiled"), allowed_first=[prompt.allowed],
        **{"pad_id": tokenizer.pad_id, "start_id": tokenizer.bos_id, **how},
    )
    seconds = time.perf_counter() - start
    new = out.tokens[0]
    # a healed prompt's first new token writes the backed-off token's text again: not new text
    text = tokenizer.decode(new[:-1] if new and new[-1] == eos else new)[len(prompt.removed) :]
    if not model.continues_prompt:
        print(f"source: {text_in}\noutput: {text}")
    else:
        print(text_in + text)
    print(speed_line(out, seconds, n_draft=cfg.draft.n_draft))
    return text, out, seconds


def continue_as_trained(cfg, tokenizer, ids: list[int]) -> tuple[list[int], dict[str, int]]:
    """The prompt to decode from and :func:`generate`'s keywords for continuing ``ids`` as the checkpoint's
    objective reads a text whose end is missing (:meth:`~zoo.objectives.base.Objective.continuation_prompt`):
    a GLM model writes the end into a blank after the prompt, as it trained; a language model continues
    the text itself. ``(ids, {})`` for a composed model, which has no objective."""
    if not cfg.checkpoint:
        return list(ids), {}
    from zoo.run.checkpoint import find
    from zoo.train import build_node

    trained = find(resolve_checkpoint(cfg.checkpoint)).config()
    if "objective" not in trained:
        return list(ids), {}
    return build_node(trained.objective, "objective", tokenizer=tokenizer).continuation_prompt(ids)


def speed_line(out: Generation, seconds: float, *, n_draft: int) -> str:
    """``[N new tokens in S s: R tokens/s]``, with the draft's acceptance when one drafted."""
    n = out.n_new
    stats = f"[{n} new tokens in {seconds:.2f} s: {n / max(seconds, 1e-9):.1f} tokens/s"
    if out.acceptance_rate is not None:
        stats += f"; draft acceptance {out.acceptance_rate:.2f} ({out.accepted}/{out.drafted}, n_draft={n_draft})"
    return stats + "]"


def run_infill(cfg, text_in: str, *, model, draft, tokenizer) -> tuple[str, Generation, float]:
    """Fill the blanks of ``text_in`` (:func:`run` with ``infill``) and print the filled text and tokens/s:
    the text around the blanks is Part A, the model writes each blank's span after ``[S]`` until ``[E]``,
    in the blanks' order. Returns the spans' text, concatenated, as :func:`run` does."""
    from zoo.objectives.blank_infilling import infilling_sentinels
    from zoo.tokenizer import MASK_TOKEN

    blank_id, start_id, end_id, pad_id = infilling_sentinels(tokenizer)
    parts = text_in.split(MASK_TOKEN)
    prompt = [*tokenizer.encode(parts[0])]
    for part in parts[1:]:
        prompt += [blank_id, *tokenizer.encode(part)]
    eos = end_id if cfg.stop_at_eos else None
    start = time.perf_counter()
    out = generate(
        model, [prompt], max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
        eos_id=eos, pad_id=pad_id, start_id=start_id, seed=cfg.seed, draft=draft, n_draft=cfg.draft.n_draft, blank_id=blank_id,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    span = out.tokens[0]
    ended = span.count(end_id) if eos is not None else 0
    spans = [tokenizer.decode(s) for s in split_spans(span, end_id)]
    if eos is not None and ended < len(parts) - 1:
        print(f"zoo-generate: the spans reached max_new_tokens={cfg.max_new_tokens} with {ended} of {len(parts) - 1} ended by [E]", file=sys.stderr)
    print("".join(part + (spans[i] if i < len(spans) else MASK_TOKEN if i < len(parts) - 1 else "") for i, part in enumerate(parts)))
    text = "".join(spans)
    print(speed_line(out, seconds, n_draft=cfg.draft.n_draft))
    return text, out, seconds


def _app(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from zoo.run.entry import exit_policy

    with exit_policy("zoo-generate"):
        run(cfg, task_overrides=list(HydraConfig.get().overrides.task))


def main() -> None:
    """The console script ``zoo-generate`` (Hydra over ``conf/generate.yaml``)."""
    import hydra

    from zoo.run.entry import check_overrides, exit_policy, setup

    setup()
    with exit_policy("zoo-generate"):
        check_overrides(sys.argv[1:], config_name="generate")
        hydra.main(config_path="pkg://zoo.conf", config_name="generate", version_base="1.3")(_app)()


__all__ = ["main", "run", "generate", "speculative_generate", "Generation", "load_checkpoint", "resolve_checkpoint"]

if __name__ == "__main__":
    main()
