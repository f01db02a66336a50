"""Device placement without a GPU: the benchmark and generation paths run on a model placed on the
``meta`` device, and every tensor handed to any of its modules must be there too.

A tensor created on the CPU by mistake (a CUDA run's ``index is on cpu`` in ``index_select``) reaches
a module as a CPU tensor: the hooks record it. Meta tensors hold no values, so a path stops at its
first read of a value; what ran before that is checked.
"""

import pytest
import torch

from zoo.bench import quality, speed
from zoo.data import MQAR
from zoo.objectives import CausalLMObjective
from zoo.testing import build_tiny

META = torch.device("meta")


def on_meta(overrides=()) -> tuple[torch.nn.Module, list[str]]:
    """A tiny model on ``meta``, and the list its hooks fill: the device of each tensor any module was called with."""
    model = build_tiny(list(overrides)).to(META)
    strays: list[str] = []

    def check(module, args, kwargs):
        for value in [*args, *kwargs.values()]:
            if torch.is_tensor(value):
                strays.append(f"{type(module).__name__} got a tensor on {value.device}")

    for module in model.modules():
        module.register_forward_pre_hook(check, with_kwargs=True)
    return model, strays


def run_until_a_value_is_read(path) -> None:
    try:
        path()
    except (NotImplementedError, RuntimeError) as error:  # meta tensors have no data to read
        if "meta" not in str(error).lower() and "data" not in str(error).lower():
            raise


def test_the_extrapolation_evaluation_feeds_the_model_on_its_device():
    model, strays = on_meta()
    data = MQAR(vocab_size=61, n_pairs=2, val_batches=2)
    run_until_a_value_is_read(
        lambda: quality.extrapolation(model, data=data, tokenizer=None, objective=CausalLMObjective(), train_len=16, factors=[1], eval_tokens=64)
    )
    assert strays and all(stray.endswith("meta") for stray in strays), sorted(set(strays))


@pytest.mark.parametrize("arch", ["causal", "prefix", "encdec"])
def test_speed_paths_feed_the_model_on_its_device(arch):
    model, strays = on_meta([f"model={arch}"])
    run_until_a_value_is_read(lambda: speed.training_speed(model, batch=2, seq_len=8, device=META, steps=1, warmup=0))
    run_until_a_value_is_read(lambda: speed.prefill_speed(model, batch=2, seq_len=8, device=META, steps=1, warmup=0))
    run_until_a_value_is_read(lambda: speed.decode_once(model, batch=2, prompt_len=4, new_tokens=2, device=META))
    assert strays and all(stray.endswith("meta") for stray in strays), sorted(set(strays))


def test_the_check_catches_a_cpu_tensor():
    """The bug this file guards against, made on purpose: the check is not vacuous."""
    model, strays = on_meta()
    run_until_a_value_is_read(lambda: model(torch.zeros(1, 4, dtype=torch.long)))
    assert any(stray.endswith("cpu") for stray in strays)
