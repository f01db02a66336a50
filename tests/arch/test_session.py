"""zoo.arch.session: how prompts are padded for a session, and how far positions let it go."""

import pytest
import torch

import zoo
from zoo.arch.session import pad_batch, position_limit
from zoo.errors import ConfigError
from zoo.testing import build_tiny


def test_decoders_pad_left_and_encoders_pad_right():
    tokens, pads = pad_batch([[1, 2, 3], [4]], pad_id=0, left=True, device=torch.device("cpu"))
    assert tokens.tolist() == [[1, 2, 3], [0, 0, 4]] and pads.tolist() == [0, 2]
    tokens, _ = pad_batch([[1, 2, 3], [4]], pad_id=0, left=False, device=torch.device("cpu"))
    assert tokens.tolist() == [[1, 2, 3], [4, 0, 0]]


def test_learned_positions_limit_a_session():
    assert position_limit(build_tiny(["model/pos=learned"])) == 32  # TINY's model.max_seq_len
    assert position_limit(build_tiny(["model/pos=rope"])) is None
    model = build_tiny(["model/pos=learned"])
    with pytest.raises(ConfigError, match="generate.max_new_tokens"):
        model.open_session([[1] * 30], pad_id=0, start_id=0, room=5)


@pytest.mark.parametrize("arch", ["causal", "prefix", "encdec"])
def test_each_architecture_opens_its_own_session(arch):
    model = build_tiny([f"model={arch}"]).eval()
    session = model.open_session([[3, 4, 5], [6]], pad_id=0, start_id=1, room=2)
    with torch.no_grad():
        logits = session.feed(session.prompt)
    assert logits.shape[0] == 2 and logits.shape[-1] == model.vocab_size
    assert session.fed == session.prompt.shape[1]


def test_an_encoder_opens_no_session():
    with pytest.raises(ConfigError, match="cannot generate"):
        zoo.build(["model=encoder", "model.dim=32", "model.n_heads=4"]).open_session([[1]], pad_id=0, start_id=0, room=1)


def test_a_session_that_cannot_fill_blanks_need_not_take_their_keywords():
    """A plugin architecture's open_session written without blank_id and end_id still generates and
    speculates: they are passed only when filling a blank."""
    from zoo.generation import generate

    model = build_tiny(["model/pos=rope"])
    opened = []

    def open_session(prompts, *, pad_id, start_id=0, room, rollback=0):
        opened.append(room)
        return type(model).open_session(model, prompts, pad_id=pad_id, start_id=start_id, room=room, rollback=rollback)

    model.open_session = open_session
    expected = generate(build_tiny(["model/pos=rope"]), [[1, 2, 3]], max_new_tokens=4, eos_id=5).tokens
    assert generate(model, [[1, 2, 3]], max_new_tokens=4, eos_id=5).tokens == expected
    assert generate(model, [[1, 2, 3]], max_new_tokens=4, eos_id=5, draft=model, n_draft=2).tokens == expected
    assert len(opened) == 3
