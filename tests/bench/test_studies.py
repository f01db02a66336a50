"""Every variant of every canned study composes, size-matches and builds, and its MQAR cases compose."""

import itertools

import pytest
from hydra.utils import instantiate

import zoo
from zoo.bench.run import apply_match, mqar_case
from zoo.bench.settings import BenchSettings
from zoo.config import group_options, instantiate_model
from zoo.train.components import check_positions


def study_variants(study: str) -> list[list[str]]:
    """The overrides of each job of ``study``'s sweep (the product of its ``hydra.sweeper.params``)."""
    params = zoo.compose([f"study={study}"], config_name="bench").hydra.sweeper.params or {}
    choices = [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items()]
    return [list(job) for job in itertools.product(*choices)]


STUDIES = [s for s in group_options("study") if s not in ("none", "peers")]
JOBS = [(study, job) for study in STUDIES for job in study_variants(study)]


def test_the_studies_are_all_here():
    assert {"quick", "ffn", "pos", "norms", "norms_stress", "attention", "moe", "arch"} <= set(STUDIES)


@pytest.mark.parametrize("study, job", JOBS, ids=[f"{s}:{','.join(j)}" for s, j in JOBS])
def test_every_job_of_every_study_builds(study, job):
    overrides = [f"study={study}", *job]
    cfg = zoo.compose(overrides, config_name="bench")
    s = BenchSettings.from_config(cfg.bench)
    match = apply_match(cfg, s, overrides=overrides)
    if match is not None:
        assert abs(match["achieved"] - match["target"]) <= 0.01 * match["target"], match
    model = instantiate_model(cfg.model, device="meta")
    check_positions(model, seq_len=int(cfg.trainer.seq_len))
    instantiate(cfg.objective)
    if s.mqar.enabled:
        for seq_len, n_pairs in s.mqar.cases:
            case = mqar_case(cfg, s, overrides=overrides, seq_len=seq_len, n_pairs=n_pairs)
            instantiate_model(case.model, device="meta")
