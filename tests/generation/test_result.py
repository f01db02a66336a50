"""zoo.generation.result: new tokens cut after EOS, and the draft's acceptance rate."""

import torch

from zoo.generation.result import Generation, trim_at_eos


def test_rows_are_cut_after_their_first_eos():
    rows = torch.tensor([[4, 2, 9, 2], [5, 6, 7, 8]])
    assert trim_at_eos(rows, 2) == [[4, 2], [5, 6, 7, 8]]
    assert trim_at_eos(rows, None) == rows.tolist()


def test_acceptance_rate_only_with_a_draft():
    assert Generation(tokens=[[1, 2], [3]]).acceptance_rate is None
    out = Generation(tokens=[[1, 2], [3]], drafted=8, accepted=6)
    assert out.acceptance_rate == 0.75 and out.n_new == 3
