"""The contract suite: every option of every model group, plugins included, passes zoo.testing's checks."""

import pytest

from zoo.config import GROUPS, group_options
from zoo.testing import check_contract

SLOTS = [group for group in GROUPS if group.startswith("model/")]
CASES = [f"{group}={option}" for group in SLOTS for option in group_options(group)]
CASES += [f"model={arch}" for arch in group_options("model")]


@pytest.mark.parametrize("override", CASES)
def test_contract(override):
    check_contract([override])
