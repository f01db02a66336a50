"""The KV cache: preallocated and rolling buffers, rollback, bytes per KV head, and cached decoding
equal to a full forward for every decoder architecture x position scheme x attention variant."""

import itertools
from functools import partial

import pytest
import torch

from zoo.arch import CausalLM, EncoderDecoder, PrefixLM
from zoo.attention import Attention, CrossAttention, DifferentialAttention, MultiHeadLatentAttention
from zoo.attention.cache import KVCache, cache_nbytes, prepare_cache, truncate_cache
from zoo.ffn import SwiGLU
from zoo.arch.session import EncDecSession, LMSession
from zoo.init import NormalInit
from zoo.norm import RMSNorm
from zoo.pos import ALiBi, LearnedPositions, NoPositions, RoPE, SinusoidalPositions, T5RelativeBias
from zoo.residual import PreNorm

POS = {
    "learned": LearnedPositions,
    "sinusoidal": SinusoidalPositions,
    "rope": RoPE,
    "alibi": ALiBi,
    "t5": partial(T5RelativeBias, n_buckets=8, max_distance=16),
    "none": NoPositions,
}
WINDOW = 4
ATTENTION = {
    "mha": partial(Attention),
    "mqa": partial(Attention, n_kv_heads=1),
    "gqa": partial(Attention, n_kv_heads=2),
    "sliding_window": partial(Attention, window=WINDOW),
    # a compressed query, values narrower than keys: every size of its own
    "mla": partial(MultiHeadLatentAttention, kv_rank=12, q_rank=10, nope_head_dim=6, v_head_dim=5),
    "mla_window": partial(MultiHeadLatentAttention, kv_rank=12, window=WINDOW),
    "differential": partial(DifferentialAttention, n_kv_heads=2),
}
ARCHS = {"causal": CausalLM, "prefix": PrefixLM, "encdec": EncoderDecoder}
VOCAB = 50


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on shared cores OpenMP waits dominate: run on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(arch: str = "causal", pos: str = "rope", attention: str = "mha", *, seed: int = 0, n_kv_heads=None, window=None):
    """A 2-layer, dim-32 model built by hand (no Hydra), seeded, in eval mode."""
    extra = {"n_kv_heads": n_kv_heads, "window": window}
    attn = partial(ATTENTION[attention], **{k: v for k, v in extra.items() if v is not None})
    kwargs = dict(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, max_seq_len=64, attention=attn,
        ffn=partial(SwiGLU), norm=partial(RMSNorm), residual=partial(PreNorm), pos=POS[pos], init=NormalInit(std=0.1),
    )
    if arch == "encdec":
        kwargs["cross_attention"] = partial(CrossAttention, n_kv_heads=attn.keywords.get("n_kv_heads"))
    torch.manual_seed(seed)
    return ARCHS[arch](**kwargs).eval()


def kv(b=1, h=2, n=1, d=4, start=0):
    """Keys whose every entry is its token index (so a returned key names its token)."""
    idx = torch.arange(start, start + n, dtype=torch.float32)
    k = idx[None, None, :, None].expand(b, h, n, d).clone()
    return k, -k, torch.arange(start, start + n)[None]


# -- the buffer ------------------------------------------------------------------------------------


def test_update_returns_the_whole_history_without_reallocating_each_step():
    cache = KVCache()
    for start, n in [(0, 5), (5, 1), (6, 1), (7, 3)]:
        k, v, pos = kv(n=n, start=start)
        keys, values, positions, valid = cache.update(k, v, pos, None)
    assert keys[0, 0, :, 0].tolist() == list(range(10))
    assert torch.equal(values, -keys) and positions[0].tolist() == list(range(10)) and valid is None
    assert cache.capacity == 16 and cache.seen == 10  # one allocation of 16 slots for 10 tokens
    storage = cache.k_buf.data_ptr()
    cache.update(*kv(start=10), None)
    assert cache.k_buf.data_ptr() == storage  # written in place, not concatenated


def test_buffers_grow_by_doubling_or_as_reserved():
    cache = KVCache()
    for t in range(17):
        cache.update(*kv(start=t), None)
    assert cache.capacity == 32 and cache.k[0, 0, :, 0].tolist() == list(range(17))
    reserved = KVCache()
    reserved.reserve(100)
    reserved.update(*kv(n=3), None)
    assert reserved.capacity == 100 and reserved.nbytes() == 2 * 1 * 2 * 100 * 4 * 4


def test_padding_flags_are_kept_per_key():
    cache = KVCache()
    k, v, pos = kv(b=2, n=3)
    cache.update(k, v, pos, None)
    valid = torch.tensor([[True, False], [True, True]])
    k, v, pos = kv(b=2, n=2, start=3)
    _, _, _, got = cache.update(k, v, pos, valid)
    assert got.tolist() == [[True, True, True, True, False], [True] * 5]
    _, _, _, got = cache.update(*kv(b=2, start=5), None)
    assert got[:, -1].all()


def test_rolling_buffer_is_bounded_by_the_window_and_holds_what_queries_see():
    cache = KVCache(window=WINDOW)
    sizes = set()
    for t in range(40):
        keys, _, positions, _ = cache.update(*kv(start=t), None)
        sizes.add(cache.nbytes())
        # the query at t sees keys t - window + 1 .. t: all of them are returned (in slot order)
        assert set(range(max(0, t - WINDOW + 1), t + 1)) <= set(positions[0].tolist())
        assert keys[0, 0, :, 0].tolist() == positions[0].float().tolist()
    assert cache.capacity == WINDOW and len(sizes) == 1  # window slots from the first step, never more


def test_rolling_buffer_with_a_prefill_longer_than_the_window():
    cache = KVCache(window=WINDOW)
    keys, _, positions, _ = cache.update(*kv(n=10), None)
    assert positions[0].tolist() == list(range(10))  # every prefill query gets its own window
    assert cache.capacity == WINDOW
    _, _, positions, _ = cache.update(*kv(start=10), None)
    assert sorted(positions[0].tolist()) == [7, 8, 9, 10]


def test_truncate_drops_the_last_tokens():
    cache = KVCache()
    cache.update(*kv(n=8), None)
    cache.truncate(5)
    _, _, positions, _ = cache.update(*kv(start=5), None)
    assert positions[0].tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        cache.truncate(9)


def test_rolling_truncate_takes_back_up_to_its_rollback():
    cache = KVCache(window=WINDOW, rollback=3)
    cache.update(*kv(n=10), None)
    cache.update(*kv(n=3, start=10), None)
    cache.truncate(10)  # three draft tokens rejected
    _, _, positions, valid = cache.update(*kv(start=10), None)
    seen = positions[0][valid[0]].tolist() if valid is not None else positions[0].tolist()
    assert set(range(7, 11)) <= set(seen) and all(p <= 10 for p in seen)


def test_rolling_truncate_refuses_to_take_back_what_it_overwrote():
    cache = KVCache(window=WINDOW, rollback=0)
    cache.update(*kv(n=12), None)
    with pytest.raises(ValueError, match="rollback"):
        cache.truncate(9)


def test_cache_bytes_shrink_exactly_with_kv_heads():
    seq = torch.randint(0, VOCAB, (2, 20))
    nbytes = {}
    for heads in (4, 2, 1):
        model = tiny(n_kv_heads=heads)
        cache = prepare_cache(model.new_cache(), max_len=20)
        with torch.no_grad():
            model(seq, cache=cache)
        nbytes[heads] = cache_nbytes(cache)
    assert nbytes[4] == 2 * 2 * 2 * 4 * 20 * 8 * 4  # k and v, 2 layers, batch 2, 4 heads, 20 tokens, head 8, fp32
    assert nbytes[2] * 2 == nbytes[4] and nbytes[1] * 4 == nbytes[4]


def test_sliding_window_cache_memory_stays_bounded_while_decoding():
    model = tiny(attention="sliding_window")
    session = LMSession(model, [[1, 2, 3]], pad_id=0, room=50)
    sizes = []
    with torch.no_grad():
        session.feed(session.prompt)
        for t in range(40):
            session.feed(torch.tensor([[t % VOCAB]]))
            sizes.append(cache_nbytes(session.cache))
    assert len(set(sizes)) == 1 and sizes[0] == 2 * 2 * 1 * 4 * WINDOW * 8 * 4


def test_truncate_cache_rolls_every_layer_back():
    model = tiny()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.randint(0, VOCAB, (1, 6)), cache=cache)
    truncate_cache(cache, 4)
    assert all(layer.self_attn.seen == 4 for layer in cache)


# -- cached decoding equals a full forward -----------------------------------------------------------

PROMPTS = [[3, 1, 4, 1, 5, 9, 2], [6, 5, 3], [8]]  # 7 > WINDOW: a sliding window's prefill overflows
CONTINUATION = [[7, 1, 8, 2, 8, 1, 8, 2, 8], [4, 5, 9, 0, 4, 5, 2, 3, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]]
CHUNKS = [1, 1, 3, 1, 1, 1, 1]  # one decode step of 3 tokens (speculative verification) among single steps

CASES = [
    (arch, pos, attention)
    for arch, pos, attention in itertools.product(ARCHS, POS, ATTENTION)
    if not (arch == "encdec" and pos == "none")  # a bidirectional encoder needs positions
]


def alone(model, prompt: list[int], continuation: list[int]) -> torch.Tensor:
    """Logits from the prompt's last token on, from one full forward of this sequence alone (no cache,
    no padding)."""
    if isinstance(model, EncoderDecoder):
        return model(torch.tensor([prompt]), torch.tensor([[0, *continuation]]))[0]
    seq = torch.tensor([prompt + continuation])
    return model(seq, prefix_len=torch.tensor([len(prompt)]))[0, len(prompt) - 1 :]


@pytest.mark.parametrize("arch,pos,attention", CASES, ids=["-".join(c) for c in CASES])
@torch.no_grad()
def test_cached_decoding_equals_full_forward(arch, pos, attention):
    """A left-padded batch of prompts of different lengths, prefilled at once and then decoded with
    the cache (past the window for sliding-window attention), gives each sequence the logits of a
    full forward of that sequence alone."""
    model = tiny(arch, pos, attention)
    if arch == "encdec":
        session = EncDecSession(model, PROMPTS, pad_id=0, start_id=0, room=16)
    else:
        session = LMSession(model, PROMPTS, pad_id=0, room=16)
    steps = [session.feed(session.prompt)[:, -1:]]
    cont = torch.tensor(CONTINUATION)
    start = 0
    for n in CHUNKS:
        steps.append(session.feed(cont[:, start : start + n]))
        start += n
    cached = torch.cat(steps, dim=1)  # (b, 1 + sum(CHUNKS), v): the logits predicting each continuation token
    for i, prompt in enumerate(PROMPTS):
        expected = alone(model, prompt, CONTINUATION[i][: sum(CHUNKS)])
        torch.testing.assert_close(cached[i], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch,pos", [("causal", "rope"), ("causal", "t5"), ("prefix", "alibi"), ("prefix", "learned")])
@torch.no_grad()
def test_long_sliding_window_prefill_then_decoding(arch, pos):
    """Prompts ten windows long (their prefill takes the linear-cost kernel ``auto`` picks for long
    windows) and of different lengths, then decoding through the rolling buffer."""
    model = tiny(arch, pos, "sliding_window")
    prompts = [[(7 * t) % VOCAB for t in range(40)], [(3 * t + 1) % VOCAB for t in range(29)]]
    cont = [[(5 * t + i) % VOCAB for t in range(8)] for i in range(2)]
    session = LMSession(model, prompts, pad_id=0, room=10)
    steps = [session.feed(session.prompt)[:, -1:]]
    steps += [session.feed(torch.tensor(cont)[:, t : t + 1]) for t in range(8)]
    cached = torch.cat(steps, dim=1)
    for i, prompt in enumerate(prompts):
        torch.testing.assert_close(cached[i], alone(model, prompt, cont[i]), atol=1e-5, rtol=1e-4)
