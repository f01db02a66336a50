"""One benchmark job: a composed variant measured for parameters, FLOPs, speed and quality.

:func:`run_variant` is what each ``zoo-bench`` job (and the Python API) calls; it returns one row
per seed for ``results.jsonl``. Order: size matching (so every later figure is of the matched
model), FLOPs and speed (a fresh model; speed also prices a wall-time budget), then the trained
figures per seed, extrapolation, the continuation score, MQAR.
"""

import copy
import datetime
import os
import platform
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from zoo.bench import quality
from zoo.bench.budget import match_knob, measure
from zoo.bench.lr import LRChoice, choose
from zoo.config import compose_aside
from zoo.arch.cost import cost_report
from zoo.bench.settings import BenchSettings
from zoo.bench.start import pretrain, refuse, start
from zoo.bench.speed import measure as measure_speed
from zoo.bench.speed import fill_batch, scaling
from zoo.bench.timing import matmul_rate, pick_device
from zoo.train import Settings


def expected_vocab(cfg: DictConfig) -> int:
    """The vocabulary the trainer will give the model: the task's, the tokenizer's, or the model's own."""
    from hydra.utils import instantiate

    for key in ("data.vocab_size", "tokenizer.vocab_size"):
        value = OmegaConf.select(cfg, key, default=None)
        if value:
            return int(value)
    try:
        return int(instantiate(cfg.tokenizer)(corpus=None).vocab_size)  # a byte tokenizer needs no corpus
    except Exception:
        return int(cfg.model.vocab_size)


def environment(device: torch.device) -> dict:
    """The machine a row was measured on."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {
        "device": f"{device.type} ({name})",
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }


def apply_match(cfg: DictConfig, s: BenchSettings, *, overrides: list[str]) -> dict | None:
    """Solve ``model.<knob>`` so the variant's count equals the reference composition's; record how."""
    if s.match.by is None:
        return None
    seq_len = int(cfg.trainer.seq_len)
    reference = compose_aside([*overrides, *s.match.reference]).model if s.match.reference else cfg.model
    target = measure(reference, by=s.match.by, seq_len=seq_len)
    value = match_knob(cfg.model, target=target, by=s.match.by, knob=s.match.knob, seq_len=seq_len)
    with open_dict(cfg):
        OmegaConf.update(cfg.model, s.match.knob, value)
    achieved = measure(cfg.model, by=s.match.by, seq_len=seq_len)
    return {"by": s.match.by, "knob": f"model.{s.match.knob}", "value": value, "target": target, "achieved": achieved, "reference": list(s.match.reference)}


def speed_figures(cfg: DictConfig, s: BenchSettings, *, device: torch.device, vocab_size: int) -> dict:
    """FLOPs per component, parameters, and (when enabled) every speed figure of a fresh model."""
    from zoo.config import instantiate_model

    model_cfg = copy.deepcopy(cfg.model)
    with open_dict(model_cfg):
        model_cfg.vocab_size = vocab_size
    torch.manual_seed(0)
    model = instantiate_model(model_cfg, device=device)
    seq_len = s.speed.seq_len or int(cfg.trainer.seq_len)
    out = cost_report(model, seq_len=seq_len)
    if "adapter" in cfg:  # what trains decides the training step's gradients and optimizer state
        from zoo.finetune.adapters import count_trainable
        from zoo.train import build_node

        build_node(cfg.adapter, "adapter").apply(model)
        out["parameters_trainable"] = count_trainable(model)
    if not s.speed.enabled:
        return out
    rate = matmul_rate(device=device, size=s.speed.matmul_size)
    run = torch.compile(model) if cfg.trainer.compile else model
    sp = s.speed
    batch = fill_batch(run, seq_len=seq_len, device=device, start=sp.batch) if sp.fill_gpu else sp.batch
    out.update(
        measure_speed(
            run, device=device, batch=batch, seq_len=seq_len, steps=sp.steps, warmup=sp.warmup,
            decode_batch=sp.decode_batch, prompt_len=sp.prompt_len, new_tokens=sp.new_tokens, matmul_flops=rate,
        )
    )  # fmt: skip
    out["matmul_flops"] = rate
    if sp.seq_lens:
        out["scaling"] = scaling(model, device=device, seq_lens=list(sp.seq_lens), tokens_per_batch=sp.tokens_per_batch, steps=sp.steps, warmup=1)
    return out


def run_variant(cfg: DictConfig, *, out_dir: str | Path, variant: str, overrides: list[str] = (), choices: dict | None = None) -> list[dict]:
    """Benchmark the composition ``cfg`` (a ``bench`` config); one result row per seed.

    Args:
        cfg: a composed ``bench`` config (``zoo.compose([...], config_name="bench")`` or Hydra's).
        out_dir: where the training runs of each seed go.
        variant: the label of this variant in tables and plots.
        overrides: the overrides that made ``cfg`` (the reference of size matching composes from them).
        choices: the option chosen in each group, recorded with every row.
    """
    s = BenchSettings.from_config(cfg.get("bench"))
    cfg = copy.deepcopy(cfg)
    out_dir = Path(out_dir)
    kept = Settings.from_config(cfg.trainer).configure_process()
    device = pick_device(str(cfg.trainer.device))
    env = environment(device) | {"keep_freed_memory": kept}
    base = {"variant": variant, "choices": choices or {}, "overrides": list(overrides), "env": env}
    fixed = dict(match=s.match.by is not None, mqar=s.quality and s.mqar.enabled, extrapolation=s.quality and s.extrapolation.enabled)
    if s.quality and s.pretrain.overrides:
        refuse(cfg, **fixed)  # before the pretraining's work
        base["pretrain"] = pretrain(
            cfg, seeds=list(s.seeds), overrides=list(overrides), extra=list(s.pretrain.overrides), seed_offset=s.pretrain.seed_offset,
            out_dir=out_dir / "pretrain",
        )  # fmt: skip
    base["start"] = start(cfg, overrides=list(overrides), seed=s.seeds[0] if s.seeds else 0, **fixed)
    base["match"] = apply_match(cfg, s, overrides=list(overrides))
    vocab_size = base["start"].get("vocab_size") or expected_vocab(cfg)
    figures = speed_figures(cfg, s, device=device, vocab_size=vocab_size)
    tokens_per_step = int(cfg.trainer.batch_size) * int(cfg.trainer.seq_len)
    steps = s.budget.steps(
        default_steps=int(cfg.trainer.max_steps), tokens_per_step=tokens_per_step,
        train_flops_per_token=figures["train_flops_per_token"], train_tokens_per_s=figures.get("train_tokens_per_s"),
    )  # fmt: skip
    base["budget"] = {"kind": s.budget.kind, "value": s.budget.value, "steps": steps, "tokens": steps * tokens_per_step}
    base.update(figures)
    if not s.quality:
        return [{**base, "seed": None, "status": "ok"}]
    if s.lr.grid:
        choice, screened = tune_lr(cfg, s, steps=steps, out_dir=out_dir / "lr", overrides=list(overrides))
        with open_dict(cfg):
            cfg.optim.lr = choice.chosen
        base["lr"] = {"chosen": choice.chosen, "grid": list(choice.grid), "losses": list(choice.losses), "on_edge": choice.on_edge,
                      "screen_steps": s.lr.screen_steps or steps, "screen_seed": s.lr.screen_seed, "screened": screened}  # fmt: skip
    rows = []
    trained = train_seeds(cfg, s, steps=steps, out_dir=out_dir, overrides=list(overrides))
    recall = mqar(cfg, s, overrides=list(overrides), out_dir=out_dir / "mqar") if s.mqar.enabled else {}
    for seed in s.seeds:
        row, model = trained[seed]
        row = {**base, **row}
        if "pretrain" in base:  # the curve on the tokens the variant saw in all, its pretraining's first (not drawn)
            row["curve"] = [[tokens + base["pretrain"]["tokens"], loss] for tokens, loss in row["curve"]]
        if row["status"] == "ok" and (s.extrapolation.enabled or s.continuation.enabled):
            loaded, data, tokenizer, objective = quality.load_trained(cfg, checkpoint=row["checkpoint"], vocab_size=row["vocab_size"], model=model)
            loaded = loaded.to(device)
            if s.extrapolation.enabled:
                row["extrapolation"] = quality.extrapolation(
                    loaded, data=data, tokenizer=tokenizer, objective=objective, train_len=int(cfg.trainer.seq_len),
                    factors=list(s.extrapolation.factors), eval_tokens=s.extrapolation.eval_tokens,
                )  # fmt: skip
            if s.continuation.enabled:
                row["continuation"] = quality.continuation(
                    loaded, data=data, tokenizer=tokenizer, objective=objective, seq_len=int(cfg.trainer.seq_len),
                    batch_size=int(cfg.trainer.batch_size), prefix=s.continuation.prefix, batches=s.continuation.batches,
                )  # fmt: skip
        if s.mqar.enabled:
            row["mqar"] = recall[seed]
        rows.append(row)
    return rows


def tune_lr(cfg: DictConfig, s: BenchSettings, *, steps: int, out_dir: Path, overrides: list[str] = ()) -> tuple[LRChoice, str]:
    """The best of ``bench.lr.grid`` for this variant (:mod:`zoo.bench.lr`) and how it was screened: the
    grid's rates trained together, stacked (:mod:`zoo.bench.seeds`), where the composition allows it,
    else one screening run per rate."""
    from zoo.bench.seeds import applies, train_together

    screen_steps = s.lr.screen_steps or steps
    grid = sorted(float(x) for x in s.lr.grid)
    why_not = applies(quality.seed_config(cfg, seed=s.lr.screen_seed, steps=screen_steps)) if s.stack_seeds and len(grid) > 1 else "one rate"
    screened = {}
    if why_not is None:
        rows, _ = train_together(cfg, seeds=[s.lr.screen_seed] * len(grid), steps=screen_steps, lrs=grid)
        screened = dict(zip(grid, rows, strict=True))

    def loss_of(lr: float) -> float | None:
        row = screened.get(lr)
        if row is None:
            trial = copy.deepcopy(cfg)
            with open_dict(trial):
                trial.optim.lr = lr
            row = quality.train_seed(trial, seed=s.lr.screen_seed, out_dir=out_dir / f"lr{lr:g}", steps=screen_steps, overrides=overrides)
        return row["val_loss"] if row["status"] == "ok" else None

    return choose(grid, loss_of), "stacked" if why_not is None else f"alone ({why_not})"


def train_seeds(
    cfg: DictConfig, s: BenchSettings, *, steps: int, out_dir: Path, overrides: list[str] = ()
) -> dict[int, tuple[dict, torch.nn.Module | None]]:
    """Each seed's result row and, when trained stacked, its model: the seeds stacked under ``vmap``
    (:mod:`zoo.bench.seeds`) where ``bench.stack_seeds`` is on and the composition allows it, else one
    seed at a time through the training loop (the row then points to its checkpoint)."""
    from zoo.bench.seeds import applies, train_together

    why_not = applies(quality.seed_config(cfg, seed=s.seeds[0], steps=steps)) if s.stack_seeds and len(s.seeds) > 1 else "one seed"
    if why_not is None:
        rows, models = train_together(cfg, seeds=list(s.seeds), steps=steps)
        return {row["seed"]: (row, model) for row, model in zip(rows, models, strict=True)}
    out = {}
    for seed in s.seeds:
        row = quality.train_seed(cfg, seed=seed, out_dir=out_dir / f"seed{seed}", steps=steps, overrides=overrides)
        out[seed] = ({**row, "trained": f"alone ({why_not})" if s.stack_seeds else "alone"}, None)
    return out


def mqar(cfg: DictConfig, s: BenchSettings, *, overrides: list[str], out_dir: Path) -> dict[int, dict]:
    """Each seed's recall (validation accuracy on the queried values) per ``[seq_len, n_pairs]`` case:
    ``{seed: {"n64_p4": recall, ...}}``; a case's seeds train stacked as the text's do."""
    out: dict[int, dict] = {seed: {} for seed in s.seeds}
    for seq_len, n_pairs in s.mqar.cases:
        case = mqar_case(cfg, s, overrides=overrides, seq_len=seq_len, n_pairs=n_pairs)
        name = f"n{seq_len}_p{n_pairs}"
        trained = train_seeds(case, s, steps=s.mqar.steps or int(case.trainer.max_steps), out_dir=out_dir / name)
        for seed, (row, _) in trained.items():
            out[seed][name] = row["val_accuracy"] if row["status"] == "ok" else row["status"]
    return out


def mqar_case(cfg: DictConfig, s: BenchSettings, *, overrides: list[str], seq_len: int, n_pairs: int) -> DictConfig:
    """The config of one MQAR case: the variant's composition, trained on the task instead of text."""
    task = quality.mqar_overrides(seq_len=seq_len, n_pairs=n_pairs, vocab_size=s.mqar.vocab_size)
    # the text data's own settings, from the command line or a study, do not apply to the task
    kept = [o for o in overrides if not o.lstrip("+~").startswith(("data.", "data=", "tokenizer"))]
    case = compose_aside([*kept, *task])
    with open_dict(case):
        case.data = compose_aside([*task, "study=none"]).data
        if s.match.by is not None:  # the matched size carries over to the task
            OmegaConf.update(case.model, s.match.knob, OmegaConf.select(cfg.model, s.match.knob))
    return case
