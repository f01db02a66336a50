"""The end-of-run sample: it stops where learned positions end and leaves the training RNG alone."""

import torch

from zoo.testing import build_tiny
from zoo.tokenizer import ByteTokenizer
from zoo.train.sample import room_for, sample
from zoo.train.settings import SampleSettings

BYTES = ByteTokenizer(n_sentinels=0)  # 260 ids


def test_sample_stops_at_the_learned_position_table():
    model = build_tiny(["model/pos=learned", "model.vocab_size=260", "model.max_seq_len=16"])
    settings = SampleSettings(prompt="def f(", max_new_tokens=50, temperature=0.0, top_k=None)
    assert room_for(model, 6, 50) == 10 and room_for(model, 20, 50) == 0
    assert sample(model, BYTES, settings=settings).startswith("def f(")  # asking generate() for 50 would raise


def test_sample_is_seeded_and_leaves_the_global_rng_alone():
    model = build_tiny(["model/pos=rope", "model.vocab_size=260"])
    settings = SampleSettings(prompt="x", max_new_tokens=12, temperature=1.0, top_k=None)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = sample(model, BYTES, settings=settings, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    assert sample(model, BYTES, settings=settings, seed=7) == first
