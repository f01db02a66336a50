"""The plugin's own tests reuse zoo's contract checks."""

import torch

from zoo.testing import check_contract
from zoo_scalenorm import ScaleNorm


def test_unit_rms_at_init():
    y = ScaleNorm(64)(torch.randn(3, 64) * 7)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(3))


def test_contract():
    check_contract(["model/norm=scalenorm"])
