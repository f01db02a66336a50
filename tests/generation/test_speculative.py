"""zoo.generation.speculative: a draft model changes the speed, never the output's distribution."""

import pytest
import torch

from zoo.errors import ConfigError
from zoo.generation import generate

from tiny_models import PROMPTS, VOCAB, perturbed, tiny


@pytest.mark.parametrize("arch", ["causal", "prefix", "encdec"])
def test_speculative_greedy_equals_plain_greedy(arch):
    """Whatever the draft (the target itself, a noisy copy, an unrelated model), the output is the
    target's greedy output, token for token; a perfect draft is always accepted."""
    target = tiny(arch)
    plain = generate(target, PROMPTS, max_new_tokens=15).tokens
    same = generate(target, PROMPTS, max_new_tokens=15, draft=target, n_draft=4)
    assert same.tokens == plain and same.acceptance_rate == 1.0
    rates = []
    for draft in (perturbed(target, scale=0.5), tiny(arch, seed=5, n_layers=1)):
        for n_draft in (1, 4):
            out = generate(target, PROMPTS, max_new_tokens=15, draft=draft, n_draft=n_draft)
            assert out.tokens == plain, (n_draft, out.tokens, plain)
            rates.append(out.acceptance_rate)
    assert all(0.0 <= r <= 1.0 for r in rates) and max(rates) > 0.0


def test_speculative_greedy_with_rolling_caches_and_eos():
    target = tiny(window=3)
    draft = perturbed(target, scale=0.5)
    plain = generate(target, PROMPTS, max_new_tokens=20).tokens
    assert generate(target, PROMPTS, max_new_tokens=20, draft=draft, n_draft=4).tokens == plain
    eos = plain[1][5]
    stopped = generate(target, PROMPTS, max_new_tokens=20, eos_id=eos).tokens
    assert generate(target, PROMPTS, max_new_tokens=20, eos_id=eos, draft=draft, n_draft=3).tokens == stopped


def test_speculative_needs_a_shared_vocabulary():
    with pytest.raises(ConfigError, match="generate.draft"):
        generate(tiny(), [[1, 2]], max_new_tokens=4, draft=tiny(vocab=VOCAB + 1))


@torch.no_grad()
def test_speculative_sampling_keeps_the_target_distribution():
    """Leviathan et al.'s theorem: with any draft, each token is distributed as the target's ``p``.
    Checked on the first two tokens over a tiny vocabulary, from many seeded runs: batches of 2 (where
    every draft is often accepted, and the target adds a token) and of 48 (where some row rejects)."""
    vocab, prompt = 6, [1, 2]
    target = tiny(vocab=vocab, dim=16, std=1.0, seed=0)
    draft = tiny(vocab=vocab, dim=16, std=1.0, seed=3, n_layers=1)
    first = lambda model: model(torch.tensor([prompt]), prefix_len=torch.tensor([2]))[0, -1].softmax(-1)  # noqa: E731
    p1 = first(target)
    p2 = p1 @ target(torch.tensor([[*prompt, t] for t in range(vocab)]))[:, -1].softmax(-1)  # second token's marginal
    assert 0.5 * (p1 - first(draft)).abs().sum() > 0.2  # a draft far from the target: the test has power
    counts = torch.zeros(2, vocab)
    runs = [(2, seed) for seed in range(40)] + [(48, seed) for seed in range(100, 115)]
    for batch, seed in runs:
        out = generate(target, [prompt] * batch, max_new_tokens=2, temperature=1.0, draft=draft, n_draft=2, seed=seed)
        for row in out.tokens:
            counts[0, row[0]] += 1
            counts[1, row[1]] += 1
    n = counts[0].sum()
    expected = torch.stack([p1, p2])
    sd = (expected * (1 - expected) / n).sqrt()
    assert ((counts / n - expected).abs() < 4 * sd + 1e-3).all(), (counts / n, expected)
