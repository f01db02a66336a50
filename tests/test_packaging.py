"""conf/ ships inside the wheel, so a non-editable `pip install .` composes models too."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_every_config(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("transformer_zoo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"zoo/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)[:5]
    assert "zoo/conf/__init__.py" in names
    assert not any(n.startswith("conf/") for n in names)
