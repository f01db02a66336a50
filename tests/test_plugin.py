"""The example plugin installs as its own distribution and its option appears everywhere zoo lists options."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugin"
ARCH_PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugin_arch"


def installed(plugin: Path, target: Path) -> dict:
    """An environment where ``plugin`` is pip-installed (into the private folder ``target``)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(plugin)],
        check=True,
        capture_output=True,
    )
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    return installed(PLUGIN, tmp_path_factory.mktemp("site"))


def python(code: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_plugin_option_composes_and_passes_the_contract(plugin_env):
    out = python(
        "import zoo; from zoo.config import choices, group_options; from zoo.testing import check_contract\n"
        "print(group_options('model/norm'))\n"
        "check_contract(['model/norm=scalenorm'])\n"
        "m = zoo.build(['model/norm=scalenorm']); print(type(m.stack.layers[0].norms[0]).__name__)\n",
        plugin_env,
    )
    assert "'scalenorm'" in out and "ScaleNorm" in out


def test_plugin_option_is_in_the_catalogue(plugin_env):
    out = python("from zoo.info import main; main([])", plugin_env)
    line = next(line for line in out.splitlines() if line.strip().startswith("scalenorm"))
    assert "[plugin scalenorm]" in line


def test_plugin_own_tests_pass(plugin_env):
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PLUGIN / "tests")],
        env=plugin_env, capture_output=True, text=True, cwd=PLUGIN,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_plugin_absent_without_install():
    out = python("from zoo.config import group_options; print(group_options('model/norm'))", dict(os.environ))
    assert "scalenorm" not in out


def test_plugin_architecture_passes_the_contract(tmp_path):
    """A new ``model`` option from its own package: composed, listed, contract-checked, costed, generating."""
    env = installed(ARCH_PLUGIN, tmp_path / "site")
    out = python(
        "import zoo; from zoo.config import group_options; from zoo.testing import check_contract, build_tiny\n"
        "from zoo.generation import generate\n"
        "print(group_options('model'))\n"
        "check_contract(['model=shared'])\n"
        "m = build_tiny(['model=shared']); print(type(m).__name__, m.param_counts()['params'], m.flops(seq_len=8).total)\n"
        "print(len(generate(m, [[1, 2, 3]], max_new_tokens=4).tokens[0]))\n",
        env,
    )
    assert "'shared'" in out and "SharedLayersLM" in out and out.splitlines()[-1] == "4"
