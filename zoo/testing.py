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

from zoo.arch.protocol import Example, device_of, missing_answers
from zoo.finetune.classify import POOLS
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


def sample_batch(model: nn.Module, *, batch: int = 2, length: int = 12, seed: int = 0) -> Example:
    """Random inputs that fit ``model``'s architecture (its own :meth:`example`), seeded."""
    return model.example(batch=batch, length=length, generator=torch.Generator().manual_seed(seed))


def run(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of ``model`` on an example's inputs, whatever its architecture."""
    return model(**inputs)


def check_shapes(model: nn.Module) -> None:
    example = sample_batch(model)
    logits = run(model, example.inputs)
    scored = example.inputs[example.scored]
    expected = (*scored.shape, model.vocab_size)
    assert tuple(logits.shape) == expected, f"logits {tuple(logits.shape)}, expected {expected}"
    assert torch.isfinite(logits).all(), "non-finite logits"


def check_gradients(model: nn.Module) -> None:
    """A backward pass reaches every parameter with a finite, non-zero gradient."""
    model.zero_grad()
    example = sample_batch(model, batch=4, length=16)
    loss = run(model, example.inputs).float().logsumexp(-1).mean()
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
    inputs = sample_batch(a).inputs
    assert torch.equal(run(a, inputs), run(b, inputs)), "outputs differ under one seed"


def check_state_dict_roundtrip(overrides: list[str]) -> None:
    """Weights saved with safetensors and loaded into a differently seeded model give the same outputs."""
    from safetensors.torch import load_model, save_model

    a, b = build_tiny(overrides, seed=1), build_tiny(overrides, seed=2)
    inputs = sample_batch(a).inputs
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        save_model(a, f.name)
        load_model(b, f.name)
    assert torch.equal(run(a, inputs), run(b, inputs)), "outputs differ after a state-dict round trip"


def check_causal(model: nn.Module, *, length: int = 10) -> None:
    """Changing token ``t + 1`` leaves the outputs at positions ``<= t`` unchanged (from the example's
    ``causal_from``: a prefix is bidirectional; a model whose examples are bidirectional is skipped)."""
    example = sample_batch(model, length=length)
    if example.causal_from is None:
        return
    inputs, seq = example.inputs, example.scored
    base = run(model, inputs)
    for t in range(example.causal_from, inputs[seq].shape[1] - 1):
        changed = dict(inputs)
        changed[seq] = inputs[seq].clone()
        changed[seq][:, t + 1] = (changed[seq][:, t + 1] + 1) % model.vocab_size
        out = run(model, changed)
        assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5), f"position <= {t} sees token {t + 1}"


def check_answers(model: nn.Module) -> None:
    """The model answers :class:`~zoo.arch.protocol.Architecture`, and its costs add up."""
    missing = missing_answers(model)
    assert not missing, f"{type(model).__name__} does not answer {missing} (zoo.arch.protocol.Architecture)"
    counts = model.param_counts()
    assert counts["params"] == sum(p.numel() for p in model.parameters()), "param_counts()['params'] is not the parameters' count"
    assert 0 < counts["active_params"] <= counts["params"], f"active_params {counts['active_params']} outside (0, params]"
    flops = model.flops(seq_len=8)
    assert flops.total > 0 and flops.tokens >= 8, f"flops(seq_len=8) counts {flops.total} FLOPs over {flops.tokens} tokens"
    assert model.input_length(8) >= 8, "input_length() shorter than the training length"
    tokens = torch.randint(0, model.vocab_size, (2, 8), device=device_of(model))
    features = model.features(tokens, valid=torch.ones_like(tokens, dtype=torch.bool))
    assert features.shape[:2] == (2, 8), f"features() of (2, 8) tokens has shape {tuple(features.shape)}, not (2, 8, dim)"
    assert model.feature_pool in POOLS, f"feature_pool {model.feature_pool!r} is none of {sorted(POOLS)}"


def check_session(model: nn.Module, *, new_tokens: int = 3) -> None:
    """Greedy decoding through ``open_session`` (prefill, then the cache) picks the tokens a full
    forward without a cache picks (models that can generate)."""
    if not model.can_generate:
        return
    prompt = [int(t) for t in torch.randint(0, model.vocab_size, (5,), generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        session = model.open_session([prompt], pad_id=0, start_id=0, room=new_tokens)
        logits = session.feed(session.prompt)[:, -1]
        generated: list[int] = []
        for _ in range(new_tokens):
            reference = model.uncached_next_logits(prompt, generated)
            assert torch.allclose(logits[0], reference, atol=1e-4, rtol=1e-4), f"cached logits differ after {len(generated)} tokens"
            generated.append(int(reference.argmax()))
            logits = session.feed(torch.tensor([[generated[-1]]], device=session.device))[:, -1]


def check_contract(overrides: list[str]) -> None:
    """Every check that applies to the model composed from ``overrides``."""
    model = build_tiny(overrides)
    check_answers(model)
    check_shapes(model)
    check_gradients(model)
    model.eval()
    check_causal(model)
    check_session(model)
    check_deterministic(overrides)
    check_state_dict_roundtrip(overrides)


def interruptible() -> None:
    """``preexec_fn`` for a child process that a test stops with SIGINT: Ctrl-C's default action and the
    signal unblocked, whatever the test process has. A child inherits an ignored or blocked SIGINT, and
    Python then installs no ``KeyboardInterrupt`` handler: the child would never see the Ctrl-C. The test
    run itself gets an ignored one whenever it is started in the background by a shell without job control
    (``bash -c 'pytest &'``, ``nohup ... &``: POSIX ignores SIGINT and SIGQUIT in such asynchronous
    commands, ``SigIgn: 0x6`` in ``/proc/<pid>/status``), as CI runners and scripts often start it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
