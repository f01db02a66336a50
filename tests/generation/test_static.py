"""zoo.generation.static: decode steps over the static-shape cache give the eager cache's tokens and
logits (MHA, GQA, MQA, a sliding window; a padded batch; every decoder architecture), and compiled
they trace once per generation, never once per step."""

import copy

import pytest
import torch

from zoo.errors import ConfigError
from zoo.generation import generate
from zoo.generation.static import StaticDecoder

from tiny_models import PROMPTS, perturbed, tiny

ATTENTION = {"mha": dict(n_kv_heads=4), "gqa": dict(n_kv_heads=2), "mqa": dict(n_kv_heads=1), "window": dict(n_kv_heads=2, window=3)}


def greedy(model, prompts, n, follow=None, **static):
    """Greedy tokens ``(b, n)`` and their logits ``(b, n, v)``, eager cache or (``static``) StaticDecoder;
    ``follow (b, n)``: feed these tokens instead of the argmax (to score another run's tokens)."""
    with torch.inference_mode():
        session = model.open_session(prompts, pad_id=0, start_id=1, room=n)
        logits = session.feed(session.prompt)[:, -1]
        step = StaticDecoder(session, room=n - 1, **static) if static else session
        tokens, seen = [], []
        for t in range(n):
            tokens.append(logits.argmax(-1) if follow is None else follow[:, t])
            seen.append(logits)
            if t + 1 < n:
                logits = step.feed(tokens[-1][:, None])[:, -1]
        return torch.stack(tokens, 1), torch.stack(seen, 1)


@pytest.mark.parametrize("attention", ATTENTION)
def test_static_steps_give_the_eager_tokens_and_logits(attention):
    model = tiny(**ATTENTION[attention])
    want, want_logits = greedy(model, PROMPTS, 12)  # 12 new tokens: the window's ring wraps many times
    got, got_logits = greedy(model, PROMPTS, 12, compiled=False)
    assert torch.equal(got, want)
    torch.testing.assert_close(got_logits, want_logits)


def test_static_steps_in_bfloat16_give_the_eager_tokens():
    """The static cache takes the model's dtype: bfloat16 weights decode on a bfloat16 cache (zoo-generate dtype=),
    with the eager cache's tokens, and logits as close to the float32 model's as the eager cache's are."""
    exact_model = tiny(n_kv_heads=2)
    model = copy.deepcopy(exact_model).to(torch.bfloat16)
    want, want_logits = greedy(model, PROMPTS, 8)
    got, got_logits = greedy(model, PROMPTS, 8, compiled=False)
    assert got_logits.dtype == torch.bfloat16 and torch.equal(got, want)
    # SDPA sums over the whole static buffer (masked) rather than the filled keys, and CPUs with bfloat16 dot
    # products (AVX-512 BF16) take other kernels than AVX2 ones: the two bfloat16 runs differ by several ulps
    # there (0.055 at a logit of 1.3), while each is 0.24-0.25 from float32. So each is held to float32.
    _, exact = greedy(exact_model, PROMPTS, 8, follow=want)
    eager_error, static_error = ((x.float() - exact).abs().max() for x in (want_logits, got_logits))
    assert static_error <= 1.5 * eager_error, (static_error, eager_error)


@pytest.mark.parametrize("arch", ["prefix", "encdec"])
def test_every_decoder_architecture_steps_statically(arch):
    model = tiny(arch)
    want, want_logits = greedy(model, PROMPTS, 8)
    got, got_logits = greedy(model, PROMPTS, 8, compiled=False)
    assert torch.equal(got, want)
    torch.testing.assert_close(got_logits, want_logits)


def test_compiled_steps_trace_once_and_never_recompile():
    """Traced by dynamo (backend ``eager``: no code generated, so it is quick); a step whose shapes or
    guarded values changed would recompile, which ``error_on_recompile`` turns into an error."""
    from torch._dynamo.utils import counters

    model = tiny(window=3)
    want, want_logits = greedy(model, PROMPTS, 10)
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(error_on_recompile=True):
        got, got_logits = greedy(model, PROMPTS, 10, backend="eager")
    assert counters["stats"]["unique_graphs"] == 1
    assert torch.equal(got, want)
    torch.testing.assert_close(got_logits, want_logits)


@pytest.mark.slow
def test_generate_compiled_with_inductor_gives_the_eager_tokens():
    """The real thing: ``generate(compiled=True)`` generates fused code (10-60 s on a shared CPU)."""
    model = tiny(n_kv_heads=1)
    torch._dynamo.reset()
    want = generate(model, PROMPTS, max_new_tokens=10, compiled=False).tokens
    assert generate(model, PROMPTS, max_new_tokens=10, compiled=True).tokens == want


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_decoding_gives_the_cpu_tokens_eager_and_with_cuda_graphs():
    """On CUDA the compiled step captures CUDA graphs (``mode="reduce-overhead"``); peaked logits (``tiny``'s
    large init) keep CPU and CUDA arithmetic from splitting near-ties."""
    model = tiny(n_kv_heads=2)
    want = generate(model, PROMPTS, max_new_tokens=12, compiled=False).tokens
    model.cuda()
    assert generate(model, PROMPTS, max_new_tokens=12, compiled=False).tokens == want
    torch._dynamo.reset()
    assert generate(model, PROMPTS, max_new_tokens=12, compiled=True).tokens == want


def test_speculative_decoding_refuses_a_compiled_step():
    model = tiny()
    with pytest.raises(ConfigError, match="generate.compiled"):
        generate(model, PROMPTS, max_new_tokens=4, draft=perturbed(model, scale=0.1), compiled=True)
