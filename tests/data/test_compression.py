"""Compressors' bits per byte on a validation split given its training split, and their cache."""

import json
import lzma
import random
import zlib

import pytest

from zoo.data import compression
from zoo.data.compression import conditional_bpb, reference_bpb
from zoo.data.corpus import Corpus, Document


class MadeCorpus(Corpus):
    """Documents with fixed splits: code-like lines from a small vocabulary, and one random document."""

    def __init__(self, docs: list[Document]) -> None:
        super().__init__(val_percent=0)
        self.docs = docs

    def load(self) -> list[Document]:
        return sorted(self.docs)


def _code(rng: random.Random, lines: int) -> str:
    words = ["def", "return", "self", "import", "os", "(", ")", ":", "value", "name", "if", "else", "for", "in"]
    return "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(2, 8))) for _ in range(lines)) + "\n"


@pytest.fixture
def corpus() -> MadeCorpus:
    rng = random.Random(0)
    train = [Document(f"train/{i}", _code(rng, 300), "train") for i in range(4)]
    # the validation repeats a training document: a compressor that saw the training split finds it
    val = [Document("val/copy", train[1].text, "validation"), Document("val/new", _code(rng, 100) + "é ü\n", "validation")]
    return MadeCorpus(train + val)


def test_conditional_bits_match_a_direct_computation(corpus):
    train, val = corpus.documents("train"), corpus.documents("validation")
    # what the module promises, written out by hand: documents joined with "\n", the extra bytes of
    # compressing the validation after the training text, over the validation's UTF-8 bytes
    t = "".join(d + "\n" for d in train).encode()
    tv = t + "".join(d + "\n" for d in val).encode()
    n_bytes = sum(len(d.encode()) for d in val)
    direct_lzma = 8 * (len(lzma.compress(tv, preset=9 | lzma.PRESET_EXTREME)) - len(lzma.compress(t, preset=9 | lzma.PRESET_EXTREME))) / n_bytes
    direct_zlib = 8 * (len(zlib.compress(tv, 9)) - len(zlib.compress(t, 9))) / n_bytes
    got = reference_bpb(corpus)
    assert got == {"lzma": pytest.approx(direct_lzma), "zlib": pytest.approx(direct_zlib)}
    # the copied document is nearly free to lzma, whose window spans the training split: less than
    # half of what it costs compressed on its own
    alone = 8 * len(lzma.compress("".join(d + "\n" for d in val).encode(), preset=9 | lzma.PRESET_EXTREME)) / n_bytes
    assert got["lzma"] < 0.5 * alone


def test_text_seen_in_training_costs_fewer_bits_than_fresh_text():
    rng = random.Random(1)
    train = [_code(rng, 200)]
    seen = conditional_bpb(train, train, compress=compression.COMPRESSORS["lzma"])
    fresh = conditional_bpb(train, [_code(rng, 200)], compress=compression.COMPRESSORS["lzma"])
    noise = conditional_bpb(train, ["".join(chr(rng.randrange(33, 127)) for _ in range(5000))], compress=compression.COMPRESSORS["lzma"])
    assert seen < 0.2 < fresh < noise
    assert 6.0 < noise < 7.0  # 94 equally likely characters: log2(94) = 6.55 bits each, nearly


def test_computed_once_per_fingerprint(corpus, tmp_path, monkeypatch):
    first = reference_bpb(corpus, cache_dir=tmp_path)
    path = tmp_path / f"{corpus.fingerprint}-compressors.json"
    assert json.loads(path.read_text()) == first

    def refuse(data: bytes) -> bytes:
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(compression, "COMPRESSORS", {"zlib": refuse, "lzma": refuse})
    assert reference_bpb(corpus, cache_dir=tmp_path) == first


def test_an_empty_validation_split_is_refused():
    with pytest.raises(ValueError, match="no text"):
        conditional_bpb(["some text"], [""], compress=compression.COMPRESSORS["zlib"])
