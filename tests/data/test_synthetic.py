"""Synthetic tasks: answers right by construction, loss only at answers, deterministic under a seed."""

import pytest
import torch

from zoo.data import MQAR, Copying, generator
from zoo.errors import ConfigError


def test_mqar_answers_are_the_values_of_the_queried_keys():
    task = MQAR(vocab_size=64, n_pairs=6, n_queries=4)
    batch = task.sample(batch_size=32, seq_len=40, generator=generator(0))
    tokens, mask = batch["tokens"], batch["loss_mask"]
    assert tokens.shape == (32, 41) and mask.shape == (32, 40) and "segment_ids" not in batch
    for row, row_mask in zip(tokens.tolist(), mask.tolist()):
        keys, values = row[0:12:2], row[1:12:2]
        assert len(set(keys)) == 6 and len(set(values)) == 6
        assert all(1 <= k < 32 for k in keys) and all(32 <= v < 64 for v in values)
        table = dict(zip(keys, values))
        answers = [t for t, m in enumerate(row_mask) if m]
        assert len(answers) == 4
        asked = [row[t] for t in answers]
        assert len(set(asked)) == 4 and all(t >= 12 for t in answers)
        # target t is token t + 1: the value of the key at t
        assert [row[t + 1] for t in answers] == [table[k] for k in asked]
        # outside the pairs and the queries, only filler
        query_tokens = {t for a in answers for t in (a, a + 1)}
        assert all(row[t] == 0 for t in range(12, 41) if t not in query_tokens)


def test_mqar_is_deterministic_under_a_seed():
    task = MQAR(vocab_size=128, n_pairs=4)
    first = task.loader(split="train", seq_len=32, batch_size=4, seed=3)
    second = task.loader(split="train", seq_len=32, batch_size=4, seed=3)
    other = task.loader(split="train", seq_len=32, batch_size=4, seed=4)
    for _, x, y, z in zip(range(3), first, second, other):
        assert torch.equal(x["tokens"], y["tokens"]) and torch.equal(x["loss_mask"], y["loss_mask"])
        assert not torch.equal(x["tokens"], z["tokens"])


def test_train_is_fresh_each_epoch_and_validation_fixed():
    task = MQAR(vocab_size=128, n_pairs=4, batches_per_epoch=2, val_batches=2)
    train = task.loader(split="train", seq_len=32, batch_size=4, seed=0)
    epoch0, epoch1 = [b["tokens"] for b in train], [b["tokens"] for b in train]
    assert not torch.equal(epoch0[0], epoch1[0])
    val = task.loader(split="validation", seq_len=32, batch_size=4, seed=0)
    pass0, pass1 = [b["tokens"] for b in val], [b["tokens"] for b in val]
    assert all(torch.equal(a, b) for a, b in zip(pass0, pass1))
    assert not torch.equal(pass0[0], epoch0[0])


def test_mqar_sizes_are_checked():
    with pytest.raises(ConfigError, match="data.n_queries"):
        MQAR(n_pairs=4, n_queries=5)
    with pytest.raises(ConfigError, match="data.vocab_size"):
        MQAR(vocab_size=8, n_pairs=4)
    with pytest.raises(ConfigError, match="data.n_pairs"):
        MQAR(vocab_size=64, n_pairs=8).loader(split="train", seq_len=16, batch_size=2, seed=0)


def test_copying_copies_and_scores_only_the_copy():
    task = Copying(vocab_size=10, copy_len=5)
    batch = task.sample(batch_size=8, seq_len=14, generator=generator(1))
    tokens, mask = batch["tokens"], batch["loss_mask"]
    assert tokens.shape == (8, 15)
    assert torch.equal(tokens[:, 6:11], tokens[:, :5])
    assert (tokens[:, 5] == Copying.SEPARATOR).all() and (tokens[:, 11:] == 0).all()
    assert (tokens[:, :5] >= 2).all() and (tokens[:, :5] < 10).all()
    # the targets under the mask are exactly the copy
    assert mask.sum(1).eq(5).all()
    assert torch.equal(tokens[:, 1:][mask].view(8, 5), tokens[:, :5])


def test_copying_default_length_fills_the_row():
    batch = Copying(vocab_size=10).sample(batch_size=2, seq_len=8, generator=generator(0))
    assert torch.equal(batch["tokens"][:, 5:], batch["tokens"][:, :4])
    with pytest.raises(ConfigError, match="data.copy_len"):
        Copying(copy_len=9).sample(batch_size=1, seq_len=16, generator=generator(0))
