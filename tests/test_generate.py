"""Generation: sampling filters, the cached decode loop, speculative decoding and the zoo-generate CLI."""

import copy as copying
import math
import sys
from functools import partial

import pytest
import torch

from zoo.arch import CausalLM, EncoderDecoder, EncoderLM, PrefixLM
from zoo.attention import Attention, CrossAttention
from zoo.errors import ConfigError
from zoo.ffn import SwiGLU
from zoo.generation import filter_logits, generate, greedy_reference, next_token, probabilities
from zoo.init import NormalInit
from zoo.norm import RMSNorm
from zoo.pos import ALiBi, LearnedPositions, RoPE, T5RelativeBias
from zoo.residual import PreNorm

VOCAB = 40
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
ARCHS = {"causal": CausalLM, "prefix": PrefixLM, "encdec": EncoderDecoder, "encoder": EncoderLM}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on shared cores OpenMP waits dominate: run on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(arch="causal", *, pos=RoPE, seed=0, n_layers=2, dim=32, window=None, std=0.3, vocab=VOCAB, max_seq_len=128):
    """A small model built by hand; a large init ``std`` makes its distributions peaked (fewer near-ties)."""
    kwargs = dict(
        vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=4, max_seq_len=max_seq_len,
        attention=partial(Attention, n_kv_heads=2, window=window), ffn=partial(SwiGLU), norm=partial(RMSNorm),
        residual=partial(PreNorm), pos=pos, init=NormalInit(std=std),
    )
    if arch == "encdec":
        kwargs["cross_attention"] = partial(CrossAttention, n_kv_heads=2)
    torch.manual_seed(seed)
    return ARCHS[arch](**kwargs).eval()


def perturbed(model, *, scale: float, seed: int = 1):
    """A copy of ``model`` with noise on every weight: a draft that agrees with it only sometimes."""
    copy = copying.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std())
    return copy


# -- sampling filters on hand-made logits ------------------------------------------------------------


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.5, -1.0, 4.0, 3.5]])
    kept = filter_logits(logits, top_k=2).isfinite()
    assert kept.tolist() == [[False, True, True, False], [False, False, True, True]]
    assert torch.equal(filter_logits(logits, top_k=10), logits)


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    assert filter_logits(logits, top_p=0.8).isfinite().tolist() == [[False, True, False, True]]  # 0.5 + 0.3
    assert filter_logits(logits, top_p=0.81).isfinite().tolist() == [[False, True, True, True]]
    assert filter_logits(logits, top_p=0.3).isfinite().tolist() == [[False, True, False, False]]  # the top one always stays
    assert filter_logits(logits, top_p=1.0).isfinite().all()
    both = filter_logits(logits, top_k=3, top_p=0.99).isfinite()
    assert both.tolist() == [[False, True, True, True]]


def test_probabilities_renormalise_over_the_kept_tokens():
    logits = torch.tensor([[0.0, math.log(3.0), math.log(2.0), -5.0]])
    p = probabilities(logits, temperature=1.0, top_k=2)
    assert torch.allclose(p, torch.tensor([[0.0, 0.6, 0.4, 0.0]]))
    sharp = probabilities(logits, temperature=0.1)
    assert sharp[0, 1] > 0.98  # a low temperature concentrates the mass on the argmax


def test_next_token_is_argmax_at_temperature_zero_and_seeded_otherwise():
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(0))
    assert torch.equal(next_token(logits), logits.argmax(-1))
    draw = lambda seed: next_token(logits, temperature=1.0, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(1), draw(1))
    assert torch.equal(next_token(logits, temperature=1.0, top_k=1), logits.argmax(-1))


@pytest.mark.parametrize(
    "kwargs,key",
    [({"temperature": -1.0}, "generate.temperature"), ({"top_k": 0}, "generate.top_k"), ({"top_p": 1.5}, "generate.top_p"),
     ({"max_new_tokens": -1}, "generate.max_new_tokens")],
)
def test_bad_settings_are_config_errors(kwargs, key):
    args = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ConfigError, match=key):
        generate(tiny(), [[1, 2]], **args)


# -- the decode loop ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["causal", "prefix", "encdec"])
@pytest.mark.parametrize("pos", [RoPE, ALiBi, LearnedPositions, partial(T5RelativeBias, n_buckets=8, max_distance=16)],
                         ids=["rope", "alibi", "learned", "t5"])
def test_cached_greedy_equals_greedy_without_cache(arch, pos):
    """A left-padded batch, decoded with the cache, gives every prompt the tokens a cache-free greedy
    loop gives it alone."""
    model = tiny(arch, pos=pos)
    out = generate(model, PROMPTS, max_new_tokens=8)
    assert out.tokens == [greedy_reference(model, p, max_new_tokens=8) for p in PROMPTS]


def test_batch_equals_each_prompt_alone_with_a_sliding_window():
    model = tiny(window=3)
    batch = generate(model, PROMPTS, max_new_tokens=12).tokens
    assert batch == [generate(model, [p], max_new_tokens=12).tokens[0] for p in PROMPTS]
    assert batch == [greedy_reference(model, p, max_new_tokens=12) for p in PROMPTS]


def test_eos_stops_each_sequence_on_its_own():
    model = tiny()
    free = generate(model, PROMPTS, max_new_tokens=10).tokens
    eos = free[0][3]
    out = generate(model, PROMPTS, max_new_tokens=10, eos_id=eos).tokens
    for row, full in zip(out, free):
        expected = full[: full.index(eos) + 1] if eos in full else full
        assert row == expected
    assert out[0][-1] == eos and len(out[0]) <= 4


def test_sampling_is_reproducible_under_a_seed_and_accepts_a_tensor():
    model = tiny()
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6]])
    a = generate(model, prompts, max_new_tokens=6, temperature=0.9, top_p=0.9, seed=7).tokens
    b = generate(model, prompts, max_new_tokens=6, temperature=0.9, top_p=0.9, generator=torch.Generator().manual_seed(7)).tokens
    c = generate(model, prompts, max_new_tokens=6, temperature=0.9, top_p=0.9, seed=8).tokens
    assert a == b and a != c and all(len(t) == 6 for t in a)


def test_generate_restores_training_mode():
    model = tiny().train()
    generate(model, [[1, 2]], max_new_tokens=2)
    assert model.training


def test_an_encoder_cannot_generate():
    with pytest.raises(ConfigError, match="encoder-only"):
        generate(tiny("encoder"), [[1, 2]], max_new_tokens=2)


def test_learned_positions_bound_the_length_before_any_work():
    model = tiny(pos=LearnedPositions, max_seq_len=16)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate(model, [[1, 2, 3]], max_new_tokens=20)


# -- speculative decoding -----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["causal", "prefix", "encdec"])
def test_speculative_greedy_equals_plain_greedy(arch):
    """Whatever the draft (the target itself, a noisy copy, an unrelated model), the output is the
    target's greedy output, token for token; a perfect draft is always accepted."""
    target = tiny(arch)
    plain = generate(target, PROMPTS, max_new_tokens=15).tokens
    same = generate(target, PROMPTS, max_new_tokens=15, draft=target, n_draft=4)
    assert same.tokens == plain and same.acceptance_rate == 1.0
    rates = []
    for draft in (perturbed(target, scale=0.5), tiny(arch, seed=5, n_layers=1)):
        for n_draft in (1, 4):
            out = generate(target, PROMPTS, max_new_tokens=15, draft=draft, n_draft=n_draft)
            assert out.tokens == plain, (n_draft, out.tokens, plain)
            rates.append(out.acceptance_rate)
    assert all(0.0 <= r <= 1.0 for r in rates) and max(rates) > 0.0


def test_speculative_greedy_with_rolling_caches_and_eos():
    target = tiny(window=3)
    draft = perturbed(target, scale=0.5)
    plain = generate(target, PROMPTS, max_new_tokens=20).tokens
    assert generate(target, PROMPTS, max_new_tokens=20, draft=draft, n_draft=4).tokens == plain
    eos = plain[1][5]
    stopped = generate(target, PROMPTS, max_new_tokens=20, eos_id=eos).tokens
    assert generate(target, PROMPTS, max_new_tokens=20, eos_id=eos, draft=draft, n_draft=3).tokens == stopped


def test_speculative_needs_a_shared_vocabulary():
    with pytest.raises(ConfigError, match="generate.draft"):
        generate(tiny(), [[1, 2]], max_new_tokens=4, draft=tiny(vocab=VOCAB + 1))


@torch.no_grad()
def test_speculative_sampling_keeps_the_target_distribution():
    """Leviathan et al.'s theorem: with any draft, each token is distributed as the target's ``p``.
    Checked on the first two tokens over a tiny vocabulary, from many seeded runs: batches of 2 (where
    every draft is often accepted, and the target adds a token) and of 48 (where some row rejects)."""
    vocab, prompt = 6, [1, 2]
    target = tiny(vocab=vocab, dim=16, std=1.0, seed=0)
    draft = tiny(vocab=vocab, dim=16, std=1.0, seed=3, n_layers=1)
    first = lambda model: model(torch.tensor([prompt]), prefix_len=torch.tensor([2]))[0, -1].softmax(-1)  # noqa: E731
    p1 = first(target)
    p2 = p1 @ target(torch.tensor([[*prompt, t] for t in range(vocab)]))[:, -1].softmax(-1)  # second token's marginal
    assert 0.5 * (p1 - first(draft)).abs().sum() > 0.2  # a draft far from the target: the test has power
    counts = torch.zeros(2, vocab)
    runs = [(2, seed) for seed in range(40)] + [(48, seed) for seed in range(100, 115)]
    for batch, seed in runs:
        out = generate(target, [prompt] * batch, max_new_tokens=2, temperature=1.0, draft=draft, n_draft=2, seed=seed)
        for row in out.tokens:
            counts[0, row[0]] += 1
            counts[1, row[1]] += 1
    n = counts[0].sum()
    expected = torch.stack([p1, p2])
    sd = (expected * (1 - expected) / n).sqrt()
    assert ((counts / n - expected).abs() < 4 * sd + 1e-3).all(), (counts / n, expected)


# -- the CLI ------------------------------------------------------------------------------------------

TINY_CLI = ["model.dim=32", "model.n_layers=2", "model.n_heads=4", "max_new_tokens=6"]


def compose_generate(overrides):
    from zoo.config import compose

    return compose(overrides, config_name="generate")


def test_cli_run_prints_text_and_speed_with_a_draft(capsys):
    from zoo.generate import run

    overrides = [*TINY_CLI, "prompt=hi", 'draft.overrides=["model.n_layers=1","model/attention=mqa"]', "temperature=0"]
    cfg = compose_generate(overrides)
    text, out, _ = run(cfg, task_overrides=overrides)
    printed = capsys.readouterr().out
    assert printed.startswith("hi") and "tokens/s" in printed and "draft acceptance" in printed
    assert out.acceptance_rate is not None and len(out.tokens[0]) <= 6


def test_cli_loads_a_training_checkpoint_folder(tmp_path, capsys):
    """A folder as zoo-train writes it (model.safetensors, config.yaml, tokenizer/), found through
    the run folder's checkpoints/latest.json."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_model

    from zoo.config import compose, instantiate_model
    from zoo.generate import run
    from zoo.tokenizer import ByteTokenizer

    def save_run(name: str, *, n_layers: int, tok) -> torch.nn.Module:
        model_cfg = compose(["model.dim=32", f"model.n_layers={n_layers}", "model.n_heads=4", f"model.vocab_size={tok.vocab_size}"]).model
        torch.manual_seed(3)
        model = instantiate_model(model_cfg).eval()
        folder = tmp_path / name / "checkpoints" / "step_00000010"
        folder.mkdir(parents=True)
        save_model(model, str(folder / "model.safetensors"))
        (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create({"model": model_cfg})))
        tok.save(folder / "tokenizer")
        (folder.parent / "latest.json").write_text('{"step": 10, "path": "step_00000010"}')
        return model

    tok = ByteTokenizer(n_sentinels=4)
    model = save_run("run", n_layers=2, tok=tok)
    cfg = compose_generate([f"checkpoint={tmp_path / 'run'}", "prompt=ab", "max_new_tokens=5", "stop_at_eos=false"])
    _, out, _ = run(cfg)
    assert out.tokens[0] == generate(model, [tok.encode("ab")], max_new_tokens=5).tokens[0]
    assert "tokens/s" in capsys.readouterr().out

    # a smaller model saved with the same tokenizer drafts; greedy output is the target's alone
    save_run("draft", n_layers=1, tok=tok)
    cfg = compose_generate([f"checkpoint={tmp_path / 'run'}", "prompt=ab", "max_new_tokens=5", "stop_at_eos=false", f"draft.checkpoint={tmp_path / 'draft'}"])
    _, with_draft, _ = run(cfg)
    assert with_draft.tokens == out.tokens and with_draft.acceptance_rate is not None
    assert "draft acceptance" in capsys.readouterr().out

    # a draft on another tokenizer would propose other ids; random weights next to trained ones never help
    save_run("other", n_layers=1, tok=ByteTokenizer(n_sentinels=8))
    cfg = compose_generate([f"checkpoint={tmp_path / 'run'}", f"draft.checkpoint={tmp_path / 'other'}"])
    with pytest.raises(ConfigError, match="draft.checkpoint.*target's tokenizer"):
        run(cfg)
    cfg = compose_generate([f"checkpoint={tmp_path / 'run'}", 'draft.overrides="model.n_layers=1"'])
    with pytest.raises(ConfigError, match="draft.overrides.*random weights"):
        run(cfg)


PROMPT = 'def main(argv=None):\n    print("a = (1)", \'b\')\n'


def test_any_text_is_a_prompt_quoted_on_the_command_line_or_in_a_file(tmp_path, monkeypatch, capsys):
    """Parentheses, both quotes, ``=`` and newlines reach the model verbatim, through Hydra's parser."""
    from zoo.generate import main

    # the shell's single quotes hand Hydra a double-quoted value; a " inside is written \"
    quoted = 'prompt="' + PROMPT.replace('"', '\\"') + '"'
    file = tmp_path / "prompt.py"
    file.write_text(PROMPT, encoding="utf-8")
    for arg in (quoted, f"prompt_file={file}"):
        monkeypatch.setattr(sys, "argv", ["zoo-generate", *TINY_CLI, arg])
        main()
        assert capsys.readouterr().out.startswith(PROMPT), arg
    monkeypatch.setattr(sys, "argv", ["zoo-generate", *TINY_CLI, f"prompt_file={tmp_path / 'missing.py'}"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "prompt_file" in err and "missing.py" in err


def test_cli_refuses_a_folder_without_safetensors(tmp_path):
    from zoo.generate import resolve_checkpoint

    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="safetensors only"):
        resolve_checkpoint(tmp_path)


def test_zoo_generate_console_script(monkeypatch, capsys):
    """``main()``, the function the ``zoo-generate`` script runs, as a Hydra app (in this process)."""
    from zoo.generate import main

    monkeypatch.setattr(sys, "argv", ["zoo-generate", *TINY_CLI, "prompt=x", "temperature=0.7", "top_k=5"])
    main()
    out = capsys.readouterr().out
    assert out.startswith("x") and "tokens/s" in out
    monkeypatch.setattr(sys, "argv", ["zoo-generate", "model=encoder"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "encoder-only" in err and "Traceback" not in err
