"""Contract checks every option of every config group must pass; shipped so plugins reuse them.

A plugin's test can run the whole contract on its option in one line::

    from zoo.testing import check_contract
    def test_my_norm():
        check_contract(["model/norm=scalenorm"])

Each ``check_*`` raises ``AssertionError`` with a message naming what broke.
"""

import functools
import tempfile

import torch
from torch import nn

from zoo.objectives import add_aux_loss

#: small sizes so a contract run takes well under a second per option
TINY = ["model.dim=32", "model.n_layers=2", "model.n_heads=4", "model.vocab_size=61", "model.max_seq_len=32"]


@functools.lru_cache(maxsize=256)
def _tiny_config(overrides: tuple[str, ...]):
    from zoo.config import compose

    return compose([*TINY, *overrides]).model


def build_tiny(overrides: list[str] = (), *, seed: int = 0) -> nn.Module:
    """A tiny model composed from ``overrides`` (after :data:`TINY`), seeded."""
    from zoo.config import instantiate_model

    cfg = _tiny_config(tuple(overrides))
    torch.manual_seed(seed)
    return instantiate_model(cfg)


def sample_batch(model: nn.Module, *, batch: int = 2, length: int = 12, seed: int = 0) -> dict:
    """Random inputs that fit ``model``'s architecture, as keyword arguments of :func:`run`."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.vocab_size, (batch, length), generator=g)
    inputs = {"tokens": tokens}
    if model.arch == "prefix":
        inputs["prefix_len"] = torch.randint(1, length, (batch,), generator=g)
    if model.arch == "encdec":
        inputs["tgt"] = torch.randint(0, model.vocab_size, (batch, length - 3), generator=g)
    return inputs


def run(model: nn.Module, tokens: torch.Tensor, *, tgt: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """Logits of ``model`` whatever its architecture: the decoder's for an encoder-decoder."""
    if model.arch == "encdec":
        return model(tokens, tgt, **kwargs)
    return model(tokens, **kwargs)


def check_shapes(model: nn.Module) -> None:
    inputs = sample_batch(model)
    logits = run(model, **inputs)
    expected_len = inputs["tgt"].shape[1] if "tgt" in inputs else inputs["tokens"].shape[1]
    expected = (inputs["tokens"].shape[0], expected_len, model.vocab_size)
    assert tuple(logits.shape) == expected, f"logits {tuple(logits.shape)}, expected {expected}"
    assert torch.isfinite(logits).all(), "non-finite logits"


def check_gradients(model: nn.Module) -> None:
    """A backward pass reaches every parameter with a finite, non-zero gradient."""
    model.zero_grad()
    inputs = sample_batch(model, batch=4, length=16)
    loss = run(model, **inputs).float().logsumexp(-1).mean()
    add_aux_loss(model, loss, {}).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient at {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient at {name}"


def check_deterministic(overrides: list[str]) -> None:
    """Same seed, same weights and same outputs."""
    a, b = build_tiny(overrides, seed=3), build_tiny(overrides, seed=3)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), f"{name} differs between two builds with one seed"
    inputs = sample_batch(a)
    assert torch.equal(run(a, **inputs), run(b, **inputs)), "outputs differ under one seed"


def check_state_dict_roundtrip(overrides: list[str]) -> None:
    """Weights saved with safetensors and loaded into a differently seeded model give the same outputs."""
    from safetensors.torch import load_model, save_model

    a, b = build_tiny(overrides, seed=1), build_tiny(overrides, seed=2)
    inputs = sample_batch(a)
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        save_model(a, f.name)
        load_model(b, f.name)
    assert torch.equal(run(a, **inputs), run(b, **inputs)), "outputs differ after a state-dict round trip"


def check_causal(model: nn.Module, *, length: int = 10) -> None:
    """Changing token ``t + 1`` leaves the outputs at positions ``<= t`` unchanged (decoders only)."""
    inputs = sample_batch(model, length=length)
    seq = "tgt" if model.arch == "encdec" else "tokens"
    base = run(model, **inputs)
    first_free = int(inputs["prefix_len"].max()) if model.arch == "prefix" else 0
    for t in range(first_free, inputs[seq].shape[1] - 1):
        changed = dict(inputs)
        changed[seq] = inputs[seq].clone()
        changed[seq][:, t + 1] = (changed[seq][:, t + 1] + 1) % model.vocab_size
        out = run(model, **changed)
        assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5), f"position <= {t} sees token {t + 1}"


def check_contract(overrides: list[str]) -> None:
    """Every check that applies to the model composed from ``overrides``."""
    model = build_tiny(overrides)
    check_shapes(model)
    check_gradients(model)
    model.eval()
    if model.arch in ("causal", "prefix", "encdec"):
        check_causal(model)
    check_deterministic(overrides)
    check_state_dict_roundtrip(overrides)
