"""Every config in conf/ composes and builds a model that runs forward and backward on CPU."""

import itertools

import pytest
import torch

import zoo
from zoo.config import choices, group_options, instantiate_model
from zoo.errors import ConfigError
from zoo.testing import TINY, check_gradients


@pytest.mark.parametrize("preset", group_options("preset"))
def test_every_preset_builds_and_trains(preset):
    torch.manual_seed(0)
    cfg = zoo.compose([f"preset={preset}", *TINY])
    assert choices(cfg)["preset"] == preset
    check_gradients(instantiate_model(cfg.model))


def test_default_config_builds():
    model = zoo.build([])
    assert model.arch == "causal" and sum(p.numel() for p in model.parameters()) > 0


def test_preset_picks_options():
    picked = choices(zoo.compose(["preset=gpt2"]))
    assert (picked["model/pos"], picked["model/norm"], picked["model/ffn"]) == ("learned", "layernorm", "gelu")


def test_sweep_composes_eight_valid_models():
    grid = itertools.product(["layernorm", "rmsnorm"], ["gelu", "swiglu"], ["rope", "alibi"])
    models = [zoo.build([f"model/norm={n}", f"model/ffn={f}", f"model/pos={p}", *TINY]) for n, f, p in grid]
    assert len(models) == 8
    signatures = {(type(m.stack.layers[0].norms[0]).__name__, type(m.stack.layers[0].ffn).__name__, type(m.stack.pos).__name__) for m in models}
    assert len(signatures) == 8


def test_layers_do_not_share_modules():
    model = zoo.build(TINY)
    first, second = model.stack.layers
    for a, b in [(first.attn, second.attn), (first.ffn, second.ffn), (first.norms[0], second.norms[0])]:
        assert a is not b


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model/norm=foo"], "model/norm"),
        (["model/attention=gqa", "model.attention.n_kv_heads=3"], "model.attention.n_kv_heads"),
        (["model/attention=sliding_window", "model.attention.window=0"], "model.attention.window"),
        (["model/pos=rope", "model.dim=60", "model.n_heads=4"], "model.pos.fraction"),
        (["model.n_heads=5"], "model.n_heads"),
        (["model=encdec", "model/residual=parallel"], "model/residual"),
        (["model=encoder", "model/pos=none"], "model/pos"),
        (["model.attention.kernel=fast"], "model.attention.kernel"),
    ],
)
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        zoo.build(overrides)
    assert str(error.value).startswith(key), str(error.value)


def test_unknown_option_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match="layernorm, rmsnorm"):
        zoo.build(["model/norm=foo"])


def every_composition() -> list[tuple[str, list[str]]]:
    """``(root config, overrides)`` choosing each option of each group once: every model slot, every
    experiment and every study (with each of its variants), plugins included."""
    from zoo.info import catalogue

    cases = []
    for option in catalogue():
        group, name = option.group, option.name
        if group == "study":
            cases.append(("bench", [f"study={name}"]))
        elif group.startswith("study/"):  # a study's variants: study/arch_variant@_global_=encdec
            study = group.split("/", 1)[1].removesuffix("_variant")
            cases.append(("bench", [f"study={study}", f"{group}@_global_={name}"]))
        elif group.startswith("experiment/"):  # an experiment's variants: experiment/finetune_variant@_global_=lora4
            experiment = group.split("/", 1)[1].removesuffix("_variant")
            cases.append(("config", [f"experiment={experiment}", f"{group}@_global_={name}"]))
        elif group == "model/ffn/router":  # in an encoder: a decoder refuses routers that see the future
            cases.append(("config", ["model=encoder", "model/ffn=moe", f"{group}={name}"]))
        else:
            cases.append(("config", [f"{group}={name}"]))
    return cases


COMPOSITIONS = every_composition()


def test_every_group_experiment_and_study_is_listed():
    groups = {overrides[-1].split("=")[0].split("@")[0] for _, overrides in COMPOSITIONS}
    assert {"model", "model/norm", "model/ffn/router", "experiment", "study", "study/arch_variant", "preset", "data"} <= groups


@pytest.mark.parametrize("root, overrides", COMPOSITIONS, ids=[" ".join(o) for _, o in COMPOSITIONS])
def test_every_option_composes_and_its_model_builds(root, overrides):
    """Each composition's model is built on the meta device: every size and factory checked, no weight made."""
    cfg = zoo.compose(overrides, config_name=root)
    model = instantiate_model(cfg.model, device="meta")
    assert model.flops(seq_len=int(cfg.trainer.seq_len)).total > 0


@pytest.mark.parametrize("path", ["experiment/ffn_ablation.yaml", "study/ffn.yaml"])
def test_the_ffn_ablation_and_study_sweep_every_dense_ffn(path):
    """experiment=ffn_ablation and study=ffn promise every dense model/ffn option (MoE has its own study)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    import zoo.conf

    sweep = OmegaConf.load(Path(zoo.conf.__path__[0]) / path)
    swept = sweep.hydra.sweeper.params["model/ffn"].split(",")
    assert sorted(swept) == sorted(set(group_options("model/ffn")) - {"moe"})
