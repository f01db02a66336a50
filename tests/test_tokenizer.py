"""Tokenizers: exact round trips, single digits, byte fallback, the specials' contract, save/load, the cache."""

import json

import pytest

from zoo.data import StdlibCorpus
from zoo.errors import ConfigError
from zoo.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer

VOCAB, SENTINELS = 512, 8

SAMPLES = [
    "",
    "hello world",
    "def f(x):\n\tif x:\n        return {'a': [1, 2]}  # comment\n",
    "  leading and trailing spaces   ",
    "\n\n\r\n\t \t\x0b\x0c",
    "naïve café, Straße, ﬁ ligature, e\u0301 combining",
    "emoji 😀🦜👩‍👩‍👧 flags 🇫🇷 and CJK 日本語の文章 and Cyrillic Привет",
    "▁ a literal metaspace ▁▁",
    "text that mentions <eos> and <pad> and <extra_id_0> and <0x41>",
    "\x00 nul and \x7f del",
    "3.14159 + 1e-10 = 42",
]


@pytest.fixture(scope="module")
def corpus():
    return StdlibCorpus(max_bytes=200_000)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenizers")


@pytest.fixture(scope="module")
def bpe(corpus, cache):
    return BPETokenizer.from_corpus(corpus=corpus, vocab_size=VOCAB, n_sentinels=SENTINELS, cache_dir=cache)


@pytest.mark.parametrize("text", SAMPLES)
def test_bpe_round_trips_exactly(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert all(0 <= i < bpe.n_regular for i in ids), "encode never emits a special token"


def test_bpe_round_trips_real_code(bpe, corpus):
    docs = corpus.documents("validation")
    assert docs
    assert all(bpe.decode(ids) == doc for doc, ids in zip(docs, bpe.encode_batch(docs)))


def test_bpe_compresses_and_merges_indentation(bpe, corpus):
    text = "\n".join(corpus.documents("validation"))
    assert len(bpe.encode(text)) < 0.6 * len(text.encode())
    assert any(set(bpe.hf.id_to_token(i)) == {" "} and len(bpe.hf.id_to_token(i)) >= 4 for i in range(bpe.n_regular))


def test_bpe_splits_digits(bpe, tmp_path):
    ids = bpe.encode("x = 1234567890 + 99")
    tokens = [bpe.hf.id_to_token(i) for i in ids]
    assert [t for t in tokens if any(c.isdigit() for c in t)] == list("1234567890") + ["9", "9"]
    # even where numbers are all there is to merge
    numbers = BPETokenizer.train(documents=["12345 67890 2024\n" * 500], vocab_size=300, n_sentinels=0, cache_dir=tmp_path)
    assert [numbers.hf.id_to_token(i) for i in numbers.encode("12345 2024")] == ["1", "2", "3", "4", "5", " ", "2", "0", "2", "4"]


def test_bpe_falls_back_to_bytes_for_unseen_characters(bpe, corpus):
    text = "龘🦜"
    assert not any(c in doc for doc in corpus.documents("train") for c in text)
    # byte tokens <0x00>..<0xFF> hold ids 0-255, so the ids are the UTF-8 bytes themselves
    assert bpe.encode(text) == list(text.encode("utf-8"))
    assert [bpe.hf.id_to_token(i) for i in bpe.encode("龘")] == ["<0xE9>", "<0xBE>", "<0x98>"]


def test_bpe_specials_follow_the_regular_tokens(bpe):
    assert bpe.n_regular + 4 + SENTINELS <= bpe.vocab_size == VOCAB
    assert [bpe.pad_id, bpe.bos_id, bpe.eos_id, bpe.mask_id] == list(range(bpe.n_regular, bpe.n_regular + 4))
    assert bpe.sentinel_ids == list(range(bpe.n_regular + 4, bpe.n_regular + 4 + SENTINELS))
    assert [bpe.hf.id_to_token(i) for i in bpe.special_ids] == bpe.specials
    assert bpe.decode([bpe.encode("a")[0], bpe.eos_id]) == "a<eos>"


@pytest.mark.parametrize("text", SAMPLES)
def test_token_bytes_count_utf8_bytes(bpe, text):
    for tok in (bpe, ByteTokenizer(n_sentinels=2)):
        assert sum(tok.token_bytes[i].item() for i in tok.encode(text)) == len(text.encode("utf-8"))
    assert bpe.token_bytes[bpe.special_ids].eq(0).all()


def test_too_small_vocabulary_names_the_minimum(corpus):
    with pytest.raises(ConfigError, match=r"^tokenizer\.vocab_size=100: >= 268"):
        BPETokenizer.train(documents=["abc"], vocab_size=100, n_sentinels=SENTINELS)


def test_the_minimum_vocabulary_is_bytes_only(tmp_path):
    tok = BPETokenizer.train(documents=["hello hello"], vocab_size=268, n_sentinels=SENTINELS, cache_dir=tmp_path)
    assert tok.n_regular == 256 and tok.encode("hé") == list("hé".encode()) and tok.decode(tok.encode("hé")) == "hé"


def test_save_and_load_give_identical_encodings(bpe, tmp_path):
    bpe.save(tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / "zoo_tokenizer.json").read_text())["class"] == "zoo.tokenizer.BPETokenizer"
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, BPETokenizer) and loaded.id == bpe.id
    assert loaded.special_ids == bpe.special_ids and loaded.vocab_size == bpe.vocab_size
    for text in SAMPLES:
        assert loaded.encode(text) == bpe.encode(text)


def test_second_training_hits_the_cache(bpe, corpus, cache):
    assert not bpe.from_cache
    again = BPETokenizer.from_corpus(corpus=corpus, vocab_size=VOCAB, n_sentinels=SENTINELS, cache_dir=cache)
    assert again.from_cache and again.id == bpe.id
    assert again.encode(SAMPLES[2]) == bpe.encode(SAMPLES[2])
    other = BPETokenizer.from_corpus(corpus=corpus, vocab_size=VOCAB + 64, n_sentinels=SENTINELS, cache_dir=cache)
    assert not other.from_cache and other.id != bpe.id


def test_default_cache_dir_follows_zoo_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    BPETokenizer.train(documents=["abc abc"], vocab_size=300, n_sentinels=0)
    assert [p.name.split("-")[0] for p in (tmp_path / "tokenizers").iterdir()] == ["bpe1"]


@pytest.mark.parametrize("text", SAMPLES)
def test_byte_tokenizer_round_trips(text):
    tok = ByteTokenizer(n_sentinels=SENTINELS)
    assert tok.encode(text) == list(text.encode("utf-8"))
    assert tok.decode(tok.encode(text)) == text


def test_byte_tokenizer_layout_and_save(tmp_path):
    tok = ByteTokenizer(n_sentinels=3)
    assert tok.vocab_size == 256 + 4 + 3 and tok.n_regular == 256
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.sentinel_ids) == (256, 257, 258, 259, [260, 261, 262])
    assert tok.decode([104, 105, tok.eos_id, tok.sentinel_ids[2], 0xFF]) == "hi<eos><extra_id_2>\ufffd"
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, ByteTokenizer) and loaded.id == tok.id == "byte-s3"
