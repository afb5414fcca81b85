"""The project's setup files agree with each other: environment.yml, pyproject.toml, README, CI."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _as_map(lines: list[str]) -> dict[str, str]:
    reqs = [Requirement(line) for line in lines]
    return {_normalise(r.name): str(r.specifier) for r in reqs}


def test_environment_yml_matches_pyproject():
    project = _pyproject()["project"]
    wanted = _as_map(project["dependencies"] + project["optional-dependencies"]["dev"])

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    pip_lists = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "environment.yml must have exactly one pip: section"
    pip_lines = [line for line in pip_lists[0] if not line.startswith("-e")]
    assert "-e ." in pip_lists[0], "environment.yml must install labkit itself (-e .)"
    got = _as_map(pip_lines)

    missing = sorted(set(wanted) - set(got))
    extra = sorted(set(got) - set(wanted))
    differ = sorted(k for k in set(wanted) & set(got) if wanted[k] != got[k])
    assert not missing, f"in pyproject.toml but not environment.yml: {missing}"
    assert not extra, f"in environment.yml but not pyproject.toml: {extra}"
    assert not differ, {k: (wanted[k], got[k]) for k in differ}

    conda_python = [d for d in deps if isinstance(d, str) and d.startswith("python")]
    assert conda_python, "environment.yml must pin python"
    version = conda_python[0].split("=")[-1]
    assert Requirement(f"python>={version}").name == "python"
    assert project["requires-python"] == ">=3.11"
    assert Requirement(f"python=={version}").specifier.contains("3.11")


def test_the_promised_pythons_are_the_tested_ones():
    """README promises 3.11-3.13; pyproject, the doctor check and CI (3.11 and 3.13) agree."""
    assert _pyproject()["project"]["requires-python"] == ">=3.11"
    assert "Python 3.11–3.13" in (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^\s*(?:step\s+)?make test-py313\s*$", ci, re.M), (
        ".ci/run must test Python 3.13"
    )
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test-py313:", makefile, re.M)
    from labkit import cli

    assert "sys.version_info >= (3, 11)" in Path(cli.__file__).read_text()


def test_ci_runs_every_kernel_set():
    ci = (ROOT / ".ci" / "run").read_text()
    for target in ("test-portable", "test-avx2"):
        assert re.search(rf"^\s*(?:step\s+)?make {target}\s*$", ci, re.M), (
            f".ci/run must call make {target}"
        )


def test_torch_pins_are_the_tested_ones():
    deps = _as_map(_pyproject()["project"]["dependencies"])
    assert deps["torch"] == "==2.14.1"
    assert deps["torchvision"] == "==0.29.1"


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert block, "README.md must open with a code block holding the two commands"
    lines = (ln.split("#", 1)[0].strip() for ln in block.group(1).splitlines())
    return [ln for ln in lines if ln]  # the commands, without their trailing comments


def test_readme_has_two_commands_backed_by_make_targets():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    makefile = (ROOT / "Makefile").read_text()
    for cmd in commands:
        target = re.fullmatch(r"make (\w+)", cmd)
        assert target, f"README command {cmd!r} should be a make target"
        assert re.search(rf"^{target.group(1)}:", makefile, re.M), f"no Makefile target for {cmd}"


def test_ci_runs_the_readme_test_command():
    commands = _readme_commands()
    test_cmd = next(c for c in commands if "test" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    line = rf"^\s*(?:step\s+)?{re.escape(test_cmd)}\s*$"  # `step` only times the command
    assert re.search(line, ci, re.M), f".ci/run must call {test_cmd!r}"


@pytest.mark.parametrize("name", ["jupyterlab", "ipywidgets", "jupyterlab_widgets", "nbval"])
def test_required_packages_declared(name):
    assert _normalise(name) in _as_map(_pyproject()["project"]["dependencies"])


def test_pre_commit_config_parses_and_runs_tools_the_dev_extras_install():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    dev = {
        _normalise(Requirement(r).name)
        for r in _pyproject()["project"]["optional-dependencies"]["dev"]
    }
    hooks = [h for repo in config["repos"] for h in repo["hooks"]]
    assert {h["id"] for h in hooks} >= {"nbstripout", "ruff-check", "ruff-format"}
    for hook in hooks:
        assert _normalise(hook["entry"].split()[0]) in dev, hook["entry"]
    strip = next(h["entry"] for h in hooks if h["id"] == "nbstripout")
    make = (ROOT / "Makefile").read_text()
    for command in (strip, next(line for line in make.splitlines() if "nbstripout" in line)):
        assert "--keep-id" in command, f"cell ids are how grading matches cells: {command}"
