"""zoo.generation.sampling: the filters and the next-token choice, on hand-made logits."""

import math

import pytest
import torch

from zoo.errors import ConfigError
from zoo.generation import filter_logits, generate, next_token, probabilities

from tiny_models import VOCAB, tiny


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.5, -1.0, 4.0, 3.5]])
    kept = filter_logits(logits, top_k=2).isfinite()
    assert kept.tolist() == [[False, True, True, False], [False, False, True, True]]
    assert torch.equal(filter_logits(logits, top_k=10), logits)


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    assert filter_logits(logits, top_p=0.8).isfinite().tolist() == [[False, True, False, True]]  # 0.5 + 0.3
    assert filter_logits(logits, top_p=0.81).isfinite().tolist() == [[False, True, True, True]]
    assert filter_logits(logits, top_p=0.3).isfinite().tolist() == [[False, True, False, False]]  # the top one always stays
    assert filter_logits(logits, top_p=1.0).isfinite().all()
    both = filter_logits(logits, top_k=3, top_p=0.99).isfinite()
    assert both.tolist() == [[False, True, True, True]]


def test_probabilities_renormalise_over_the_kept_tokens():
    logits = torch.tensor([[0.0, math.log(3.0), math.log(2.0), -5.0]])
    p = probabilities(logits, temperature=1.0, top_k=2)
    assert torch.allclose(p, torch.tensor([[0.0, 0.6, 0.4, 0.0]]))
    sharp = probabilities(logits, temperature=0.1)
    assert sharp[0, 1] > 0.98  # a low temperature concentrates the mass on the argmax


def test_next_token_is_argmax_at_temperature_zero_and_seeded_otherwise():
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(0))
    assert torch.equal(next_token(logits), logits.argmax(-1))
    draw = lambda seed: next_token(logits, temperature=1.0, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(1), draw(1))
    assert torch.equal(next_token(logits, temperature=1.0, top_k=1), logits.argmax(-1))


@pytest.mark.parametrize(
    "kwargs,key",
    [({"temperature": -1.0}, "generate.temperature"), ({"top_k": 0}, "generate.top_k"), ({"top_p": 1.5}, "generate.top_p"),
     ({"max_new_tokens": -1}, "generate.max_new_tokens")],
)
def test_bad_settings_are_config_errors(kwargs, key):
    args = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ConfigError, match=key):
        generate(tiny(), [[1, 2]], **args)
