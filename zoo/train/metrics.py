"""What a run measures: validation loss, perplexity and bits per byte; parameters; FLOPs per token.

Bits per byte (Gao et al. 2020, The Pile, arXiv:2101.00027) divides the total loss in nats by
``ln 2`` times the UTF-8 bytes of the evaluated text, so a byte tokenizer and a BPE, whose tokens
cover different amounts of text, are compared on the same footing. A text run also reports what
zlib and lzma spend on the same validation split given its training split
(:mod:`zoo.data.compression`), the fixed reference point next to the model's figure.
"""

import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from zoo.arch.cost import training_flops_per_token
from zoo.ffn.moe.losses import aux_losses, moe_stats
from zoo.train.distributed import Dist, all_reduce_sum, sharded


def sums_of(metrics: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(5,)`` float64 of one batch: nats, target tokens, target bytes, correct predictions, and 1
    if the objective gave no byte count (no bits per byte then)."""
    n = metrics["n_tokens"].detach().double().cpu()
    n_bytes = metrics.get("n_bytes")
    no_bytes = n_bytes is None
    return torch.stack(
        [
            metrics["nll_sum"].detach().double().cpu(),
            n,
            n.new_zeros(()) if no_bytes else n_bytes.detach().double().cpu(),
            metrics["accuracy"].detach().double().cpu() * n,
            n.new_tensor(float(no_bytes)),
        ]
    )


def summarise(sums: torch.Tensor) -> dict[str, float]:
    """Loss (nats per target token), perplexity, accuracy, and bits per byte when every batch counted bytes."""
    nll, n, n_bytes, correct, no_bytes = (float(v) for v in sums)
    loss = nll / max(n, 1.0)
    out = {"loss": loss, "ppl": math.exp(min(loss, 80.0)), "accuracy": correct / max(n, 1.0), "tokens": n}
    if no_bytes == 0 and n_bytes > 0:
        out["bpb"] = nll / (math.log(2) * n_bytes)
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    objective: Callable,
    dist: Dist,
    max_batches: int | None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> dict[str, float]:
    """Validation metrics over ``max_batches`` batches (``None``: all), the rows shared among ranks.

    Args:
        model: the bare model (no DDP wrapper: ranks may see different numbers of rows; a sharded
            FSDP model is its own wrapper, and every rank runs each forward).
        batches: a validation loader, from its first batch.
        objective: a fresh objective instance, so every pass draws the same masks.
        dist: the process group; sums are reduced over it.
        max_batches: how many batches to evaluate.
        autocast: the mixed-precision context of the run.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros(5, dtype=torch.float64)
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            rows = {k: v[dist.rank :: dist.world].to(dist.device, non_blocking=True) for k, v in batch.items()}
            left_out = rows["tokens"].shape[0] == 0  # a short last batch can leave a rank nothing
            if left_out and not sharded(model):
                continue
            if left_out:  # a sharded model's forward gathers weights from every rank: take part, count nothing
                rows = {k: v[:1].to(dist.device, non_blocking=True) for k, v in batch.items()}
            with autocast():
                _, metrics = objective(model, rows)
            if not left_out:
                total += sums_of(metrics)
    finally:
        model.train(was_training)
    return summarise(all_reduce_sum(total.to(dist.device), dist).cpu())


def compressor_metrics(data) -> dict[str, float]:
    """``{"val_zlib_bpb": .., "val_lzma_bpb": ..}`` for a text corpus (cached by its fingerprint in
    ``data.cache_dir``, beside the tokenised splits); empty for a synthetic task."""
    from zoo.data.compression import reference_bpb

    corpus = getattr(data, "corpus", None)
    if corpus is None:
        return {}
    reference = reference_bpb(corpus, cache_dir=getattr(data, "cache_dir", None))
    return {f"val_{name}_bpb": value for name, value in reference.items()}


def routing_metrics(model: nn.Module) -> dict[str, float]:
    """The MoE layers' router losses and routing statistics of the latest forward, for the log.

    ``moe/load_balance`` and ``moe/z_loss`` (summed over layers, scaled as in the training loss),
    ``moe/dropped``, ``moe/max_load`` and ``moe/load_<i>`` per expert (:func:`~zoo.ffn.moe.moe_stats`);
    empty for a dense model.
    """
    out = {}
    for name, value in {**aux_losses(model), **moe_stats(model)}.items():
        value = value.detach()
        if value.dim() == 0:
            out[f"moe/{name}"] = float(value)
        else:
            out.update({f"moe/{name}_{i}": float(v) for i, v in enumerate(value.tolist())})
    return out


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Unique parameters (a tied matrix once), those a token passes through (MoE: its experts only),
    and those outside the token embedding and an untied head: the model's own count (:mod:`zoo.arch.cost`)."""
    counts = model.param_counts()
    return {
        "parameters": counts["params"],
        "parameters_active": counts["active_params"],
        "parameters_non_embedding": counts["params"] - counts["embedding_params"],
    }


def flops_per_token(model: nn.Module, *, seq_len: int) -> float:
    """Training FLOPs per token (forward and backward) as the model counts them per component: windows
    count only their keys, a MoE only its active experts (:func:`zoo.arch.cost.training_flops_per_token`,
    the figure ``zoo-bench`` reports as ``train_flops_per_token``)."""
    return training_flops_per_token(model, seq_len=seq_len)
