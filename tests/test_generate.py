"""zoo-generate, the command line (zoo/generate.py): text, speed, drafts and checkpoint folders."""

import sys

import pytest
import torch

from zoo.errors import ConfigError


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


def test_cli_refuses_a_compiled_step_with_a_draft_before_building_anything(monkeypatch):
    from zoo import generate as cli

    monkeypatch.setattr(cli, "build_models", lambda *a, **k: pytest.fail("built a model before refusing"))
    cfg = compose_generate([*TINY_CLI, "compiled=true", 'draft.overrides="model.n_layers=1"'])
    with pytest.raises(ConfigError, match="compiled=True.*draft"):
        cli.run(cfg)


def test_cli_loads_a_training_checkpoint_folder(tmp_path, capsys):
    """A folder as zoo-train writes it (model.safetensors, config.yaml, tokenizer/), found through
    the run folder's checkpoints/latest.json."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_model

    from zoo.config import compose, instantiate_model
    from zoo.generate import run
    from zoo.generation import generate
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


# -- GLM blank infilling: a prompt with a blank <mask> in it

GLM_TRAIN = [
    "experiment=smoke", "model=prefix", "model/pos=learned_2d", "objective=blank_infilling", "data.corpus.sources=[pydoc]",
    "data.corpus.max_bytes=60000", "logger=none", "trainer.max_steps=4", "trainer.eval_every=0", "trainer.final_eval_batches=1",
    "trainer.quiet=true", "trainer.sample.max_new_tokens=0",
]  # fmt: skip


def test_zoo_generate_fills_the_blank_of_a_glm_checkpoint(tmp_path, monkeypatch, capsys):
    """A GLM run trained a few steps, then ``zoo-generate checkpoint=<run> 'prompt="...<mask>..."'``: the
    text around the blank is printed with the span the model writes, the one the library writes."""
    from zoo.generate import load_checkpoint, main
    from zoo.generation import fill, generate
    from zoo.objectives.blank_infilling import infilling_sentinels
    from zoo.train import run as train

    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    assert train(GLM_TRAIN, out_dir=tmp_path / "glm").status == "ok"
    before, after = "f(a, b) = ", " + b\n"
    monkeypatch.setattr(sys, "argv", ["zoo-generate", f"checkpoint={tmp_path / 'glm'}", f"prompt_file={tmp_path / 'prompt.py'}", "max_new_tokens=6"])
    (tmp_path / "prompt.py").write_text(before + "<mask>" + after, encoding="utf-8")
    main()
    printed = capsys.readouterr().out

    model, tok = load_checkpoint(tmp_path / "glm", device=torch.device("cpu"))
    blank, start, end, pad = infilling_sentinels(tok)
    prompt = [*tok.encode(before), blank, *tok.encode(after)]
    span = generate(model, [prompt], max_new_tokens=6, blank_id=blank, start_id=start, eos_id=end, pad_id=pad).tokens[0]
    assert printed.startswith(tok.decode(fill(prompt, span, blank_id=blank, end_id=end)) + "\n[") and "tokens/s" in printed


def test_zoo_generate_continues_a_glm_checkpoint_as_it_trained(tmp_path, monkeypatch, capsys):
    """A prompt without a blank: a GLM model trained with document-level rows writes the text's end into a
    [gMASK] after the prompt (its objective's ``continuation_prompt``), not as a prefix LM it never was."""
    from zoo.generate import load_checkpoint, main
    from zoo.generation import generate
    from zoo.objectives.blank_infilling import generation_blank, infilling_sentinels
    from zoo.train import run as train

    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    assert train([*GLM_TRAIN, "objective.document_ratio=0.5"], out_dir=tmp_path / "glm").status == "ok"
    monkeypatch.setattr(sys, "argv", ["zoo-generate", f"checkpoint={tmp_path / 'glm'}", 'prompt="def f("', "max_new_tokens=6", "heal=false"])
    main()
    printed = capsys.readouterr().out

    model, tok = load_checkpoint(tmp_path / "glm", device=torch.device("cpu"))
    _, start, end, pad = infilling_sentinels(tok)
    gmask = generation_blank(tok)
    span = generate(model, [[*tok.encode("def f("), gmask]], max_new_tokens=6, blank_id=gmask, start_id=start, eos_id=end, pad_id=pad).tokens[0]
    assert printed.startswith("def f(" + tok.decode([t for t in span if t != end]) + "\n[")
    monkeypatch.setattr(sys, "argv", [*sys.argv, "stop_at_eos=false"])
    main()
    assert capsys.readouterr().out.startswith("def f(")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["infill=true", "prompt=abc"], r"^infill=True: a prompt holding the blank to fill, written <mask>"),
        (['prompt="a<mask>b<mask>"', "stop_at_eos=false"], r"^stop_at_eos=False: true when the prompt holds 2 blanks <mask>"),
        (["infill=sometimes", 'prompt="a<mask>"'], r"^infill='sometimes': true .*, false .* or null"),
        (['prompt="a<mask>"', "chat=true"], r"^chat=True: false when filling a blank"),
        (['prompt="a<mask>"', "compiled=true"], r"^compiled=True: false or null when filling a blank"),
    ],
)
def test_cli_refuses_a_blank_it_cannot_fill_before_building_anything(monkeypatch, overrides, message):
    from zoo import generate as cli

    monkeypatch.setattr(cli, "build_models", lambda *a, **k: pytest.fail("built a model before refusing"))
    with pytest.raises(ConfigError, match=message) as error:
        cli.run(compose_generate([*TINY_CLI, "model=prefix", "model/pos=learned_2d", *overrides]))
    assert "\n" not in str(error.value)


def test_cli_fills_several_blanks_in_their_order(monkeypatch, capsys):
    """``prompt="ab<mask>c<mask>d"``: the spans generate() writes, each in its blank; a blank the tokens did
    not reach is printed as ``<mask>``."""
    from zoo import generate as cli
    from zoo.generation import generate
    from zoo.generation.infill import split_spans
    from zoo.objectives.blank_infilling import infilling_sentinels
    from zoo.testing import build_tiny
    from zoo.tokenizer import ByteTokenizer

    tok = ByteTokenizer(n_sentinels=4)
    model = build_tiny(["model=prefix", "model/pos=learned_2d", f"model.vocab_size={tok.vocab_size}", "model.max_seq_len=64"])
    blank, start, end, pad = infilling_sentinels(tok)
    prompt = [*tok.encode("ab"), blank, *tok.encode("c"), blank, *tok.encode("d")]
    monkeypatch.setattr(cli, "build_models", lambda *a, **k: (model, None, tok))
    text, out, _ = cli.run(compose_generate([*TINY_CLI, "model=prefix", "model/pos=learned_2d", 'prompt="ab<mask>c<mask>d"', "temperature=0"]))
    span = generate(model, [prompt], max_new_tokens=6, blank_id=blank, start_id=start, eos_id=end, pad_id=pad).tokens[0]
    assert out.tokens[0] == span
    spans = [tok.decode(s) for s in split_spans(span, end)]
    filled = "ab" + spans[0] + "c" + (spans[1] if len(spans) > 1 else "<mask>") + "d"
    assert capsys.readouterr().out.startswith(filled + "\n[") and text == "".join(spans)


def test_cli_refuses_a_blank_for_a_model_without_2d_positions_and_reads_it_as_text_when_told(capsys):
    from zoo.generate import run

    with pytest.raises(ConfigError, match=r"^model/pos='RoPE': .* need model/pos=learned_2d or rope_2d$"):
        run(compose_generate([*TINY_CLI, "model=prefix", 'prompt="a<mask>b"']))
    with pytest.raises(ConfigError, match=r"^model='causal': a prefix decoder trained with objective=blank_infilling"):
        run(compose_generate([*TINY_CLI, 'prompt="a<mask>b"']))
    run(compose_generate([*TINY_CLI, 'prompt="a<mask>b"', "infill=false"]))
    assert capsys.readouterr().out.startswith("a<mask>b")


def test_cli_generates_in_bfloat16_and_refuses_an_unknown_dtype_before_building(monkeypatch, capsys):
    """``dtype=bfloat16`` casts the weights (and so the cache); an unknown dtype is one line naming the key."""
    from zoo import generate as cli

    overrides = [*TINY_CLI, "prompt=hi", "dtype=bfloat16", "stop_at_eos=false"]
    model, _, _ = cli.build_models(compose_generate(overrides), task_overrides=overrides)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    _, out, _ = cli.run(compose_generate(overrides))
    assert len(out.tokens[0]) == 6 and capsys.readouterr().out.startswith("hi")
    monkeypatch.setattr(cli, "build_models", lambda *a, **k: pytest.fail("built a model before refusing"))
    with pytest.raises(ConfigError, match="dtype='fp8': one of float32, bfloat16, float16"):
        cli.run(compose_generate([*TINY_CLI, "dtype=fp8"]))
