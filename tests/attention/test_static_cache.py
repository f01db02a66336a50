"""zoo.attention.static_cache: a prefilled KVCache taken over slot for slot, one token written a step
in place, the whole buffer returned with flags that hide empty, padded and overwritten slots."""

import pytest
import torch

from zoo.attention.cache import KVCache, prepare_cache, LayerCache
from zoo.attention.static_cache import StaticKVCache, make_static


def kv(b, n, *, start=0, k=2, d=4):
    g = torch.Generator().manual_seed(start)
    pos = torch.arange(start, start + n)[None].expand(b, n)
    return torch.randn(b, k, n, d, generator=g), torch.randn(b, k, n, d, generator=g), pos


def prefilled(*, window=None, prompt=5, room=3, valid=None):
    cache = KVCache(window=window)
    cache.reserve(prompt + room)
    k, v, pos = kv(2, prompt)
    cache.update(k, v, pos, valid)
    return cache


def test_a_step_returns_the_whole_buffer_with_only_written_keys_valid():
    eager = prefilled(room=3)
    static = StaticKVCache.adopt(prefilled(room=3), room=3)
    assert static.capacity == eager.capacity >= 8
    k, v, pos = kv(2, 1, start=5)
    want_k, want_v, want_pos, _ = eager.update(k, v, pos, None)
    got_k, got_v, got_pos, got_valid = static.update(k, v, pos, None)
    assert got_k.shape == static.k_buf.shape and got_valid.tolist() == [[i < 6 for i in range(static.capacity)]] * 2
    torch.testing.assert_close(got_k[:, :, :6], want_k)
    torch.testing.assert_close(got_v[:, :, :6], want_v)
    assert torch.equal(got_pos[:, :6], want_pos) and int(static.cursor) == 6
    assert torch.isfinite(got_k).all() and torch.isfinite(got_v).all()  # empty slots are zeros, not garbage


def test_padding_stays_hidden_and_new_tokens_are_valid():
    valid = torch.tensor([[True] * 5, [False, False, True, True, True]])
    static = StaticKVCache.adopt(prefilled(valid=valid), room=3)
    _, _, _, got = static.update(*kv(2, 1, start=5), None)
    assert got[:, :6].tolist() == [[True] * 6, [False, False, True, True, True, True]]


def test_a_ring_writes_where_the_eager_ring_does():
    eager, static = prefilled(window=4, prompt=6), StaticKVCache.adopt(prefilled(window=4, prompt=6), room=3)
    assert static.capacity == 4
    for t in range(6, 9):
        step = kv(2, 1, start=t)
        want = eager.update(*step, None)
        got = static.update(*step, None)
        for w, g in zip(want[:3], got[:3]):  # the same slots: token i in slot i % 4
            assert torch.equal(w, g)
        assert got[3].all()


def test_it_refuses_what_would_not_fit_or_change_shape():
    with pytest.raises(ValueError, match="free slots"):
        StaticKVCache.adopt(prefilled(room=3), room=20)  # the buffer holds 16
    with pytest.raises(ValueError, match="prefilled"):
        StaticKVCache.adopt(KVCache(), room=1)
    static = StaticKVCache.adopt(prefilled(), room=3)
    with pytest.raises(ValueError, match="one token a step"):
        static.update(*kv(2, 2, start=5), None)


def test_make_static_keeps_the_bytes():
    caches = prepare_cache([LayerCache(), LayerCache(window=4)], max_len=8)
    for layer in caches:
        layer.self_attn.update(*kv(2, 5), None)
    before = [layer.nbytes() for layer in caches]
    make_static(caches, room=3)
    assert all(isinstance(layer.self_attn, StaticKVCache) for layer in caches)
    assert [layer.nbytes() for layer in caches] == before
