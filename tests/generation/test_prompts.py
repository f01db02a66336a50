"""zoo.generation.prompts: prompts as id lists, and models run in eval mode for a block."""

import pytest
import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.generation.prompts import as_lists, evaluating


def test_a_tensor_is_one_prompt_per_row():
    assert as_lists(torch.tensor([[1, 2], [3, 4]])) == [[1, 2], [3, 4]]
    assert as_lists([(5,), [6, 7]]) == [[5], [6, 7]]


@pytest.mark.parametrize("prompts", [[], [[1], []], torch.zeros(3, dtype=torch.long)])
def test_empty_or_flat_prompts_are_config_errors(prompts):
    with pytest.raises(ConfigError, match="generate.prompts"):
        as_lists(prompts)


def test_evaluating_restores_each_flag():
    a, b = nn.Dropout().train(), nn.Dropout().eval()
    with evaluating(a, b):
        assert not a.training and not b.training
    assert a.training and not b.training
