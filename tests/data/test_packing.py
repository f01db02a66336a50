"""Packing: shifted targets, document-boundary masking, deterministic and resumable batches, the token cache."""

import json

import pytest
import torch

import zoo.data.packing as packing
from zoo.data import PackedDataset, TextCorpus, TokenData, tokenize_documents
from zoo.errors import ConfigError
from zoo.tokenizer import ByteTokenizer

E = 99  # the <eos> of the hand-built streams


def stream(*ids):
    return torch.tensor(ids, dtype=torch.int32)


def test_tokenize_documents_separates_with_eos():
    tok = ByteTokenizer(n_sentinels=0)
    out = tokenize_documents(["ab", "", "c"], tokenizer=tok)
    assert out.dtype == torch.int32
    assert out.tolist() == [97, 98, tok.eos_id, tok.eos_id, 99, tok.eos_id]


def test_rows_overlap_by_one_so_targets_are_the_shifted_inputs():
    data = PackedDataset(stream=torch.arange(11, dtype=torch.int32), seq_len=3, eos_id=E, boundaries="cross")
    assert len(data) == 3
    rows = data[torch.arange(3)]["tokens"]
    assert rows.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    # every stream token after the first is a target exactly once
    targets = rows[:, 1:].flatten().tolist()
    assert targets == list(range(1, 10))


def test_cross_mode_keeps_every_target():
    data = PackedDataset(stream=stream(1, 2, E, 3, 4, E, 5, 6, 7), seq_len=4, eos_id=E, boundaries="cross")
    batch = data[torch.arange(len(data))]
    assert batch["loss_mask"].all() and "segment_ids" not in batch  # one text: attention crosses documents


def test_mask_mode_masks_targets_across_documents():
    data = PackedDataset(stream=stream(1, 2, E, 3, 4, E, 5, 6, 7, E, 8), seq_len=5, eos_id=E, boundaries="mask")
    batch = data[torch.arange(len(data))]
    assert batch["tokens"].tolist() == [[1, 2, E, 3, 4, E], [E, 5, 6, 7, E, 8]]
    # a target whose input is <eos> is the next document's first token: not predictable, masked
    assert batch["loss_mask"].tolist() == [[True, True, False, True, True], [False, True, True, True, False]]
    # an <eos> belongs to the document it ends
    assert batch["segment_ids"].tolist() == [[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 2]]


def test_attend_mode_masks_the_loss_but_lets_attention_cross_documents():
    data = PackedDataset(stream=stream(1, 2, E, 3, 4, E, 5, 6, 7, E, 8), seq_len=5, eos_id=E, boundaries="attend")
    batch = data[torch.arange(len(data))]
    masked = PackedDataset(stream=stream(1, 2, E, 3, 4, E, 5, 6, 7, E, 8), seq_len=5, eos_id=E)[torch.arange(len(data))]
    assert torch.equal(batch["loss_mask"], masked["loss_mask"]) and "segment_ids" not in batch


def test_loader_is_deterministic_and_shuffles_each_epoch():
    data = PackedDataset(stream=torch.arange(201, dtype=torch.int32), seq_len=4, eos_id=E)
    one = data.loader(batch_size=5, seed=7)
    two = data.loader(batch_size=5, seed=7)
    epoch_a, epoch_b = [b["tokens"] for b in one], [b["tokens"] for b in two]
    assert len(epoch_a) == len(one) == 10
    assert all(torch.equal(x, y) for x, y in zip(epoch_a, epoch_b))
    firsts = torch.cat(epoch_a)[:, 0]
    assert sorted(firsts.tolist()) == list(range(0, 200, 4)), "an epoch visits every row once"
    assert firsts.tolist() != list(range(0, 200, 4)), "rows are shuffled"
    next_epoch = torch.cat([b["tokens"] for b in one])[:, 0]
    assert not torch.equal(next_epoch, firsts)
    other_seed = torch.cat([b["tokens"] for b in data.loader(batch_size=5, seed=8)])[:, 0]
    assert not torch.equal(other_seed, firsts)


@pytest.mark.parametrize("stop", [3, 10, 14])  # mid-epoch, at an epoch's end, mid second epoch
def test_loader_resumes_mid_epoch_from_a_json_state(stop):
    data = PackedDataset(stream=torch.arange(201, dtype=torch.int32), seq_len=4, eos_id=E)
    reference = data.loader(batch_size=5, seed=1)
    expected = [b["tokens"] for b in [*reference, *reference, *reference]]  # three epochs
    run = data.loader(batch_size=5, seed=1)
    seen = []
    it = iter(run)
    while len(seen) < stop:
        try:
            seen.append(next(it)["tokens"])
        except StopIteration:
            it = iter(run)
    state = json.loads(json.dumps(run.state_dict()))
    assert all(isinstance(v, int) for v in state.values())
    resumed = data.loader(batch_size=5, seed=123)  # the state carries the seed
    resumed.load_state_dict(state)
    rest = [b["tokens"] for b in [*resumed, *resumed]]
    assert all(torch.equal(a, b) for a, b in zip(seen + rest, expected))
    assert len(seen + rest) >= 20


def test_loader_refuses_state_of_other_data():
    data = PackedDataset(stream=torch.arange(201, dtype=torch.int32), seq_len=4, eos_id=E)
    state = data.loader(batch_size=5, seed=0).state_dict()
    with pytest.raises(ValueError, match="batches per epoch"):
        data.loader(batch_size=4, seed=0).load_state_dict(state)


def test_loader_without_drop_last_keeps_the_remainder():
    data = PackedDataset(stream=torch.arange(23, dtype=torch.int32), seq_len=2, eos_id=E)  # 11 rows
    sizes = [len(b["tokens"]) for b in data.loader(batch_size=4, seed=0, shuffle=False, drop_last=False)]
    assert sizes == [4, 4, 3]
    with pytest.raises(ConfigError, match="batch_size"):
        data.loader(batch_size=12, seed=0)


@pytest.fixture
def text_dir(tmp_path):
    folder = tmp_path / "text"
    folder.mkdir()
    for i in range(12):
        (folder / f"doc{i:02d}.txt").write_text(f"document number {i}\n" * (i + 3))
    return folder


def test_token_data_serves_the_corpus(text_dir):
    tok = ByteTokenizer(n_sentinels=0)
    corpus = TextCorpus(path=text_dir, val_percent=20)
    data = TokenData(corpus=corpus, boundaries="mask")
    expected = tokenize_documents(corpus.documents("train"), tokenizer=tok)
    assert torch.equal(data.stream(split="train", tokenizer=tok), expected)
    loader = data.loader(split="train", seq_len=16, batch_size=4, seed=0, tokenizer=tok)
    batch = next(iter(loader))
    assert batch["tokens"].shape == (4, 17) and batch["loss_mask"].shape == (4, 16)
    assert torch.equal(batch["loss_mask"], batch["tokens"][:, :-1] != tok.eos_id)
    val = data.loader(split="validation", seq_len=16, batch_size=4, seed=0, tokenizer=tok)
    first = torch.cat([b["tokens"] for b in val])
    assert torch.equal(first[:, 0], data.dataset(split="validation", seq_len=16, tokenizer=tok).rows[:, 0].long()), "validation is not shuffled"
    with pytest.raises(ConfigError, match="tokenizer"):
        data.loader(split="train", seq_len=16, batch_size=4, seed=0)


def test_token_data_caches_on_disk_by_fingerprint_and_tokenizer(text_dir, tmp_path, monkeypatch):
    tok = ByteTokenizer(n_sentinels=0)
    corpus = TextCorpus(path=text_dir)
    first = TokenData(corpus=corpus, cache_dir=tmp_path / "cache").stream(split="train", tokenizer=tok)
    cached = list((tmp_path / "cache").iterdir())
    assert [p.name for p in cached] == [f"{corpus.fingerprint}-{tok.id}-train.pt"]

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenised again despite the cache")

    monkeypatch.setattr(packing, "tokenize_documents", no_tokenizing)
    again = TokenData(corpus=TextCorpus(path=text_dir), cache_dir=tmp_path / "cache").stream(split="train", tokenizer=tok)
    assert torch.equal(first, again)
    with pytest.raises(AssertionError, match="tokenised again"):
        TokenData(corpus=corpus, cache_dir=tmp_path / "cache").stream(split="train", tokenizer=ByteTokenizer(n_sentinels=3))


def test_bad_boundaries_is_a_config_error(text_dir):
    with pytest.raises(ConfigError, match="data.boundaries"):
        TokenData(corpus=TextCorpus(path=text_dir), boundaries="reset")
