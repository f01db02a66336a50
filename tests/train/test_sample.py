"""The end-of-run sample: it stops where learned positions end, leaves the training RNG alone, and a GLM
model writes it by filling a blank, as it trained."""

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


def test_a_glm_model_samples_by_filling_a_blank_at_the_prompts_end():
    from zoo.generation import generate
    from zoo.objectives import BlankInfillingObjective
    from zoo.objectives.blank_infilling import infilling_sentinels

    tok = ByteTokenizer(n_sentinels=4)
    model = build_tiny(["model=prefix", "model/pos=rope_2d", f"model.vocab_size={tok.vocab_size}"])
    settings = SampleSettings(prompt="def f(", max_new_tokens=8, temperature=0.0, top_k=None, heal=False)
    text = sample(model, tok, settings=settings, objective=BlankInfillingObjective(tokenizer=tok))
    mask, start, end, pad = infilling_sentinels(tok)
    span = generate(model, [[*tok.encode("def f("), mask]], max_new_tokens=8, temperature=0.0, blank_id=mask, start_id=start, eos_id=end, pad_id=pad)
    assert text == "def f(" + tok.decode([t for t in span.tokens[0] if t != end])
