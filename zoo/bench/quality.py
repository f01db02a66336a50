"""Quality at a fixed budget, over seeds: validation loss and bits per byte, length extrapolation, MQAR.

Every run goes through the training loop's Python API (:func:`zoo.train.train`) with the variant's
composed config, so a benchmark trains exactly as ``zoo-train`` does. Per seed it records the final
validation figures and the loss curve; :mod:`zoo.bench.stats` turns seeds into means and intervals.

- **Extrapolation** (Press et al. 2021, ALiBi, arXiv:2108.12409): the model trained at length ``L``
  is evaluated on the validation split cut into rows of ``k L`` tokens for each factor ``k``; a
  position scheme that cannot encode the length (learned positions) reports ``"n/a (max length)"``.
- **MQAR** (multi-query associative recall; Arora et al. 2023, Zoology, arXiv:2312.04927): a fresh
  model of the same composition trained on ``data=mqar`` per (sequence length, pairs) case; the
  validation accuracy on the queried values is the recall.
"""

import copy
import itertools
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from zoo.bench.speed import NA_LENGTH

NA_SPLIT = "n/a (validation split too short)"


def seed_config(cfg: DictConfig, *, seed: int, steps: int | None = None) -> DictConfig:
    """A copy of ``cfg`` for one quiet training run: its seed, no logger of its own, no sample text."""
    run = copy.deepcopy(cfg)
    with open_dict(run):
        run.trainer.seed = seed
        run.trainer.quiet = True
        run.trainer.overwrite = True  # the job owns its seeds' folders: a job run again (a resumed study) starts them anew
        run.trainer.sample.max_new_tokens = 0
        if steps is not None:
            run.trainer.max_steps = steps
        run.logger = OmegaConf.create({"_target_": "zoo.train.logger.NoLogger"})
    return run


def curve(history: list[float], *, tokens_per_step: int, points: int = 100) -> list[list[float]]:
    """``[[tokens, loss], ...]``: the per-step training loss, averaged over windows to at most ``points``."""
    if not history:
        return []
    width = max(1, len(history) // points)
    out = []
    for start in range(0, len(history), width):
        window = history[start : start + width]
        out.append([(start + len(window)) * tokens_per_step, sum(window) / len(window)])
    return out


def convergence(history: list[float], *, tolerance: float = 0.02) -> dict:
    """How much the training loss still fell over the last quarter of the run (means of the last two
    eighths, so one noisy step does not decide it); ``not_converged`` when more than ``tolerance`` nats,
    about the size of the effects a study measures: a longer budget may then change the order."""
    n = len(history)
    if n < 16:
        return {"last_quarter_drop": None, "not_converged": False}
    eighth = n // 8
    earlier = sum(history[n - 2 * eighth : n - eighth]) / eighth
    last = sum(history[n - eighth :]) / eighth
    drop = 2 * (earlier - last)  # two eighths: the quarter's drop at that slope
    return {"last_quarter_drop": drop, "not_converged": drop > tolerance}


def per_batch_eval(model: torch.nn.Module, loader, *, objective, max_batches: int | None) -> dict:
    """Validation figures as :func:`zoo.train.metrics.evaluate` gives them, plus the losses of the single
    batches (``val_batch_losses``) and their standard error (``val_loss_se``): the evaluation's own noise."""
    from zoo.train import Dist, evaluate

    loader.reset()
    parts = [evaluate(model, [b], objective=objective, dist=Dist(), max_batches=None) for b in itertools.islice(loader, max_batches)]
    # the whole pass from its batches, as evaluate() sums it: nats and correct targets weighted by tokens
    tokens = sum(p["tokens"] for p in parts)
    nll = sum(p["loss"] * p["tokens"] for p in parts)
    out = {"val_loss": nll / tokens, "val_accuracy": sum(p["accuracy"] * p["tokens"] for p in parts) / tokens}
    if all("bpb" in p for p in parts):
        out["val_bpb"] = nll / sum(p["loss"] * p["tokens"] / p["bpb"] for p in parts)  # bpb_i = nll_i / (ln 2 bytes_i)
    losses = [p["loss"] for p in parts]
    out["val_batch_losses"] = losses
    if len(losses) > 1:
        mean = sum(losses) / len(losses)
        out["val_loss_se"] = (sum((x - mean) ** 2 for x in losses) / (len(losses) - 1) / len(losses)) ** 0.5
    return out


def data_record(run: DictConfig, *, corpus: str | None, tokenizer: str | None) -> dict:
    """What a run's batch stream is a function of (with its seed): rows of two variants with equal records
    and seeds saw the same batches in the same order, and are compared paired (:func:`zoo.bench.report.compare`)."""
    return {
        "corpus": corpus, "tokenizer": tokenizer, "batch_size": int(run.trainer.batch_size), "seq_len": int(run.trainer.seq_len),
        "data": OmegaConf.select(run, "data._target_", default=None),
    }  # fmt: skip


def train_seed(cfg: DictConfig, *, seed: int, out_dir: Path, steps: int | None = None, overrides: Sequence[str] = ()) -> dict:
    """Train one seed; the final validation figures, the loss curve and where the weights are.

    ``overrides``: the job's, so a run started from ``trainer.init_from`` keeps the model keys they
    name over the source's (:func:`zoo.finetune.pretrained.rebase_model`).
    """
    from zoo.train import RunInfo, train

    run = seed_config(cfg, seed=seed, steps=steps)
    result = train(run, out_dir=out_dir, info=RunInfo(overrides=list(overrides)))
    m = result.metrics
    tokens_per_step = int(run.trainer.batch_size) * int(run.trainer.seq_len)
    row = {
        "seed": seed,
        "status": result.status,
        "steps": m.get("steps"),
        "tokens": m.get("tokens_seen"),
        "val_loss": m.get("val_loss"),
        "val_bpb": m.get("val_bpb"),
        "val_accuracy": m.get("val_accuracy"),
        "train_loss": m.get("train_loss"),
        "vocab_size": m.get("vocab_size"),
        "curve": curve(result.history, tokens_per_step=tokens_per_step),
        "convergence": convergence(result.history),
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "parameters_trainable": m.get("parameters_trainable"),
        "init": m.get("init"),
        "data": data_record(run, corpus=m.get("corpus_fingerprint"), tokenizer=m.get("tokenizer")),
    }
    if result.status != "ok":
        row["error"] = m.get("error")
    return row


def load_trained(cfg: DictConfig, *, checkpoint: str | None, vocab_size: int, model: torch.nn.Module | None = None):
    """The trained model (``model`` itself when given, else loaded from the run's ``checkpoint``), its data,
    tokenizer and a fresh objective."""
    from hydra.utils import instantiate

    from zoo.config import instantiate_model
    from zoo.tokenizer import load_tokenizer
    from zoo.run.checkpoint import find, load_weights

    data = instantiate(cfg.data)
    if model is not None:
        tokenizer = instantiate(cfg.tokenizer)(corpus=getattr(data, "corpus", None)) if getattr(data, "vocab_size", None) is None else None
        return model, data, tokenizer, instantiate(cfg.objective)(tokenizer=tokenizer)
    found = find(checkpoint)
    tokenizer = load_tokenizer(found.path / "tokenizer") if (found.path / "tokenizer").exists() else None
    model_cfg = copy.deepcopy(cfg.model)
    with open_dict(model_cfg):
        model_cfg.vocab_size = vocab_size
    model = instantiate_model(model_cfg)
    load_weights(found, model)
    objective = instantiate(cfg.objective)(tokenizer=tokenizer)
    return model, data, tokenizer, objective


def extrapolation(
    model: torch.nn.Module,
    *,
    data,
    tokenizer,
    objective,
    train_len: int,
    factors: list[float],
    eval_tokens: int,
) -> dict[str, float | str]:
    """Validation loss at ``factor x train_len`` for each factor, over about ``eval_tokens`` tokens each."""
    from zoo.bench.speed import max_length
    from zoo.errors import ConfigError
    from zoo.train import Dist, evaluate

    limit = max_length(model)
    out: dict[str, float | str] = {}
    for factor in factors:
        length = int(round(factor * train_len))
        key = f"{factor:g}x"
        if limit is not None and length > limit:
            out[key] = NA_LENGTH
            continue
        batch = max(1, eval_tokens // (4 * length))
        try:
            loader = data.loader(split="validation", seq_len=length, batch_size=batch, seed=0, tokenizer=tokenizer)
        except ConfigError:
            out[key] = NA_SPLIT
            continue
        # the batches go where the model is (Dist() alone means CPU: on CUDA the embedding got a CPU index)
        device = next(model.parameters()).device
        figures = evaluate(model, loader, objective=objective, dist=Dist(device=device), max_batches=4)
        out[key] = figures["loss"]
    return out


def continuation(model: torch.nn.Module, *, data, tokenizer, objective, seq_len: int, batch_size: int, prefix: float, batches: int) -> dict[str, float]:
    """The loss of each validation row's end given its first ``prefix`` share, read as ``objective`` reads a
    text whose end is missing (:meth:`~zoo.objectives.base.Objective.continuation`), over the split's first
    ``batches`` batches (seed 0: the same rows for every variant). Returns ``loss`` (nats per predicted
    token), ``accuracy``, ``tokens`` and ``prefix_len``."""
    import functools

    from zoo.train import Dist, evaluate

    prefix_len = max(1, round(prefix * (seq_len + 1)))
    loader = data.loader(split="validation", seq_len=seq_len, batch_size=batch_size, seed=0, tokenizer=tokenizer)
    score = functools.partial(objective.continuation, prefix_len=prefix_len)
    figures = evaluate(model, loader, objective=score, dist=Dist(device=next(model.parameters()).device), max_batches=batches)
    return {"loss": figures["loss"], "accuracy": figures["accuracy"], "tokens": figures["tokens"], "prefix_len": prefix_len}


def mqar_overrides(*, seq_len: int, n_pairs: int, vocab_size: int) -> list[str]:
    """The overrides that turn a composition into an MQAR run of one case."""
    return [
        "data=mqar",
        f"data.n_pairs={n_pairs}",
        f"data.vocab_size={vocab_size}",
        f"trainer.seq_len={seq_len}",
        f"model.max_seq_len={seq_len}",
    ]
