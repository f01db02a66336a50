"""The contract suite: every option of every model group, plugins included, passes zoo.testing's checks."""

import pytest

from zoo.config import GROUPS, group_options
from zoo.errors import ConfigError
from zoo.testing import build_tiny, check_contract

SLOTS = [group for group in GROUPS if group.startswith("model/")]
CASES = [f"{group}={option}" for group in SLOTS for option in group_options(group)]
CASES += [f"model={arch}" for arch in group_options("model")]


@pytest.mark.parametrize("override", CASES)
def test_contract(override):
    check_contract([override])


#: every pattern in an encoder-decoder's stacks, under RoPE (which every mixer takes; T5's bias needs scores)
ENCDEC = ["model=encdec", "model/pos=rope"]


@pytest.mark.parametrize("option", group_options("model/layers"))
def test_contract_of_a_pattern_in_the_encdec_decoder(option):
    check_contract([*ENCDEC, f"model/layers@model.decoder_layers={option}"])


@pytest.mark.parametrize("option", group_options("model/layers"))
def test_contract_of_a_pattern_in_both_encdec_stacks(option):
    """The contract, or, for a kind an encoder cannot take (a mixer that reads left to right), a one-line
    refusal naming that kind."""
    overrides = [*ENCDEC, f"model/layers={option}"]
    try:
        build_tiny(overrides)
    except ConfigError as e:
        assert e.key.startswith("model.layers.kinds.") and "bidirectional" in str(e) and "\n" not in str(e), str(e)
        return
    check_contract(overrides)
