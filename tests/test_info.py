"""zoo-info lists every option the issue names, and docs/components.md is its current output."""

import contextlib
import io
import warnings
from importlib.resources import files
from pathlib import Path

import pytest

from zoo.config import CONF_MODULE
from zoo.info import catalogue, compatibility, main, markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "components.md"
REQUIRED = {
    "model": ["causal", "prefix", "encdec", "encoder"],
    "model/norm": ["layernorm", "rmsnorm"],
    "model/residual": ["pre", "post", "sandwich", "deepnorm", "parallel"],
    "model/ffn": ["relu", "gelu", "swiglu", "geglu", "reglu", "moe"],
    "model/pos": ["learned", "sinusoidal", "rope", "alibi", "t5", "none"],
    "model/attention": ["mha", "mqa", "gqa", "sliding_window"],
    "preset": ["gpt2", "llama", "t5", "bloom", "palm"],
}


@pytest.fixture(scope="module")
def options():
    return catalogue()


@pytest.fixture(scope="module")
def matrix(options):
    return compatibility(options)


@pytest.fixture(scope="module")
def printed():
    """What ``zoo-info`` prints (stdout, stderr) and the warnings it raises: run once, it composes every option."""
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        warnings.simplefilter("always")  # pytest's config hides Hydra's warnings; zoo-info must not need that
        main([])
    return out.getvalue(), err.getvalue(), [str(w.message) for w in caught]


def test_every_required_option_is_listed(options):
    listed = {(o.group, o.name) for o in options}
    missing = [(g, n) for g, names in REQUIRED.items() for n in names if (g, n) not in listed]
    assert not missing


def test_every_option_has_a_summary(options):
    assert [f"{o.group}={o.name}" for o in options if not o.summary] == []


def test_compatibility_reads_declarations(matrix):
    assert matrix["model/residual=parallel"]["encdec"].startswith("no")
    assert matrix["model/pos=learned"]["past max_seq_len"] == "no"
    # GLM's 2D positions (objective=blank_infilling): only the schemes that declare them
    assert {o.split("=")[1] for o, row in matrix.items() if row.get("2D (GLM)") == "yes"} == {"learned_2d", "rope_2d"}
    assert matrix["model/pos=none"]["encoder"].startswith("no")
    assert matrix["objective=span_corruption"]["encdec"] == "yes"
    assert matrix["objective=span_corruption"]["causal"] == "no"


def test_cli_prints_the_catalogue(printed):
    out, _, _ = printed
    assert "sliding_window" in out and "compatibility" in out


def test_cli_prints_no_warning_and_whole_descriptions(options, printed):
    out, err, caught = printed
    assert caught == [] and err == ""
    conf = files(CONF_MODULE)
    for o in (o for o in options if o.provider == "zoo"):
        text = conf.joinpath(*o.group.split("/"), f"{o.name}.yaml").read_text().splitlines()
        opening = text[: next((i for i, line in enumerate(text) if not line.startswith("#")), len(text))]
        for line in opening:
            if not line.startswith("# @package"):
                assert line.lstrip("#").strip() in out, f"{o.group}={o.name}: zoo-info cuts its description"


def test_expert_choice_is_marked_for_encoders_only(matrix):
    row = matrix["model/ffn/router=expert_choice"]
    assert row["encoder"] == "yes" and all(row[arch].startswith("no") for arch in ("causal", "prefix", "encdec"))


def test_components_doc_is_up_to_date(options):
    expected = markdown([o for o in options if o.provider == "zoo"]) + "\n"
    assert DOC.read_text() == expected, "regenerate it: zoo-info --markdown > docs/components.md"


def test_cost_shows_each_layers_decoding_step():
    """``zoo-info --cost`` for latent attention (which has no k_proj): the absorbed form decodes cheaper."""
    from zoo.info import cost

    def decode_step(overrides: list[str]) -> list[float]:
        lines = cost(["model/attention=mla", *overrides]).splitlines()
        header = next(i for i, line in enumerate(lines) if "decode step flops" in line)
        return [float(line.split()[-2].replace(",", "")) for line in lines[header + 1 :]]

    absorbed, expanded = decode_step([]), decode_step(["model.attention.absorb=false"])
    assert len(absorbed) == len(expanded) > 0
    assert all(0 < a < e for a, e in zip(absorbed, expanded))
