"""zoo.generation.healing: a prompt that ends in a bare space is backed off and written again."""

import pytest
import torch

from zoo.generation import generate
from zoo.generation.healing import encode_prompt
from zoo.generation.sampling import restrict
from zoo.tokenizer import BPETokenizer, ByteTokenizer
from zoo.train.sample import sample
from zoo.train.settings import SampleSettings

from tiny_models import PROMPTS, perturbed, tiny

CODE = "def main(args):\n    return run(args, 12345)\n\nclass Name:\n    def value(self, x = 0):\n        return x\n"


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    return BPETokenizer.train(documents=[CODE] * 50, vocab_size=300, n_sentinels=2, cache_dir=tmp_path_factory.mktemp("bpe"))


def test_a_trailing_space_is_backed_off_and_only_tokens_starting_with_it_may_follow(bpe):
    """zoo's split gives a bare " " token only before digits (``x = 0``): "def " is healed to "def"
    plus a first token that starts with a space, words included."""
    assert [bpe.decode([i]) for i in bpe.encode("def ")] == ["def", " "]
    healed = encode_prompt(bpe, "def ")
    assert healed.ids == bpe.encode("def") and healed.text == "def" and healed.removed == " "
    texts = [bpe.decode([i]) for i in healed.allowed]
    assert all(t.startswith(" ") for t in texts) and " " in texts
    assert any(t[1:].isalpha() for t in texts)  # a word with its leading space
    assert len(healed.allowed) < bpe.n_regular  # a restriction, not every token


def test_healing_is_skipped_where_it_cannot_apply(bpe):
    assert encode_prompt(bpe, "def ", heal=False).ids == bpe.encode("def ")
    assert encode_prompt(bpe, "def ", heal=False).allowed is None
    empty = encode_prompt(bpe, "")
    assert empty.ids == [bpe.bos_id] and empty.allowed is None and empty.text == ""
    one = encode_prompt(bpe, " ")  # nothing left after backing off: start from <bos>
    assert one.ids == [bpe.bos_id] and one.text == "" and one.removed == " "
    byte = ByteTokenizer(n_sentinels=0)  # "é" is two byte tokens: the last alone is part of a character
    assert encode_prompt(byte, "abé").allowed is None and encode_prompt(byte, "abé").ids == byte.encode("abé")


def test_restrict_masks_only_the_rows_given_a_set():
    logits = torch.randn(3, 8)
    out = restrict(logits, [[1, 2], None, [7]])
    assert torch.equal(out[1], logits[1])
    assert torch.isinf(out[0]).sum() == 6 and torch.equal(out[0, [1, 2]], logits[0, [1, 2]])
    assert out[2].argmax() == 7
    assert restrict(logits, None) is logits


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_first_new_token_is_one_of_the_allowed_and_the_rest_run_free(temperature):
    model = tiny()
    allowed = [[3, 4], None, [30]]
    out = generate(model, PROMPTS, max_new_tokens=6, temperature=temperature, seed=0, allowed_first=allowed).tokens
    assert out[0][0] in (3, 4) and out[2][0] == 30
    free = generate(model, PROMPTS, max_new_tokens=6, temperature=temperature, seed=0).tokens
    assert out[1] == free[1]  # an unrestricted row is what it is alone
    if temperature == 0:  # greedy: after the forced first token, the same as feeding it by hand
        forced = generate(model, [PROMPTS[2] + [30]], max_new_tokens=5).tokens[0]
        assert out[2][1:] == forced


def test_speculative_decoding_restricts_the_first_token_alike():
    target = tiny()
    allowed = [[3, 4], None, [30]]
    plain = generate(target, PROMPTS, max_new_tokens=8, allowed_first=allowed).tokens
    drafted = generate(target, PROMPTS, max_new_tokens=8, allowed_first=allowed, draft=perturbed(target, scale=0.5), n_draft=3)
    assert drafted.tokens == plain


def test_a_byte_prompt_heals_to_the_same_tokens():
    """Bytes are single-byte tokens: the only token starting with the backed-off byte is that byte, so
    healing changes nothing in what is generated."""
    tok = ByteTokenizer(n_sentinels=0)
    model = tiny(vocab=tok.vocab_size)
    healed = encode_prompt(tok, "def ")
    assert healed.allowed == [ord(" ")]
    with_healing = generate(model, [healed.ids], max_new_tokens=6, allowed_first=[healed.allowed]).tokens[0]
    assert [ord(" "), *generate(model, [tok.encode("def ")], max_new_tokens=5).tokens[0]] == with_healing


def test_the_run_sample_keeps_the_prompt_text(bpe):
    model = tiny(vocab=bpe.vocab_size)
    for heal in (True, False):
        text = sample(model, bpe, settings=SampleSettings(prompt="def ", max_new_tokens=5, heal=heal))
        assert text.startswith("def ")
