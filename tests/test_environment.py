"""environment.yml (conda, for clusters) must list the same pip dependencies as pyproject.toml."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda package name -> pip name


def _name(req: str) -> str:
    return re.split(r"[\[<>=!~ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r): r for r in project["dependencies"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = set(), {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip.update({_name(r): r for r in dep["pip"] if not r.startswith("-e")})
            assert "-e ." in dep["pip"], "environment.yml must install the checkout itself"
        else:
            conda.add(CONDA_NAMES.get(_name(dep), _name(dep)))
    provided = set(pip) | conda
    assert set(wanted) <= provided, f"missing from environment.yml: {sorted(set(wanted) - provided)}"
    extra = set(pip) - set(wanted)
    assert not extra, f"environment.yml pip section lists packages pyproject.toml does not: {sorted(extra)}"
    for name, req in pip.items():  # same version floor on both sides
        assert req.replace(" ", "") == wanted[name].replace(" ", ""), (req, wanted[name])
    assert {"torch", "torchvision"} <= conda  # CUDA builds come from conda
