"""zoo.generation.loop: cached greedy and sampled decoding against the uncached reference, EOS, padding, modes."""

from functools import partial

import pytest
import torch

from zoo.errors import ConfigError
from zoo.generation import generate, greedy_reference
from zoo.pos import ALiBi, LearnedPositions, RoPE, T5RelativeBias

from tiny_models import PROMPTS, tiny


@pytest.mark.parametrize("arch", ["causal", "prefix", "encdec"])
@pytest.mark.parametrize("pos", [RoPE, ALiBi, LearnedPositions, partial(T5RelativeBias, n_buckets=8, max_distance=16)],
                         ids=["rope", "alibi", "learned", "t5"])
def test_cached_greedy_equals_greedy_without_cache(arch, pos):
    """A left-padded batch, decoded with the cache, gives every prompt the tokens a cache-free greedy
    loop gives it alone."""
    model = tiny(arch, pos=pos)
    out = generate(model, PROMPTS, max_new_tokens=8)
    assert out.tokens == [greedy_reference(model, p, max_new_tokens=8) for p in PROMPTS]


def test_batch_equals_each_prompt_alone_with_a_sliding_window():
    model = tiny(window=3)
    batch = generate(model, PROMPTS, max_new_tokens=12).tokens
    assert batch == [generate(model, [p], max_new_tokens=12).tokens[0] for p in PROMPTS]
    assert batch == [greedy_reference(model, p, max_new_tokens=12) for p in PROMPTS]


def test_eos_stops_each_sequence_on_its_own():
    model = tiny()
    free = generate(model, PROMPTS, max_new_tokens=10).tokens
    eos = free[0][3]
    out = generate(model, PROMPTS, max_new_tokens=10, eos_id=eos).tokens
    for row, full in zip(out, free):
        expected = full[: full.index(eos) + 1] if eos in full else full
        assert row == expected
    assert out[0][-1] == eos and len(out[0]) <= 4


def test_sampling_is_reproducible_under_a_seed_and_accepts_a_tensor():
    model = tiny()
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6]])
    a = generate(model, prompts, max_new_tokens=6, temperature=0.9, top_p=0.9, seed=7).tokens
    b = generate(model, prompts, max_new_tokens=6, temperature=0.9, top_p=0.9, generator=torch.Generator().manual_seed(7)).tokens
    c = generate(model, prompts, max_new_tokens=6, temperature=0.9, top_p=0.9, seed=8).tokens
    assert a == b and a != c and all(len(t) == 6 for t in a)


def test_generate_restores_training_mode():
    model = tiny().train()
    generate(model, [[1, 2]], max_new_tokens=2)
    assert model.training


def test_an_encoder_cannot_generate():
    with pytest.raises(ConfigError, match="encoder-only"):
        generate(tiny("encoder"), [[1, 2]], max_new_tokens=2)


def test_learned_positions_bound_the_length_before_any_work():
    model = tiny(pos=LearnedPositions, max_seq_len=16)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate(model, [[1, 2, 3]], max_new_tokens=20)
