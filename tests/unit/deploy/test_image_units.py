"""The container image file and the systemd units, checked without Docker or a running systemd.

No Docker engine runs here, so the image is not built: the Dockerfile is parsed and its
instructions checked against the repository and the chart (and linted with hadolint when it is on
PATH). The units are checked with ``systemd-analyze verify`` (Debian: systemd).
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.unit.deploy.chartkit import CHART, REPO

DOCKERFILE = REPO / "deploy" / "Dockerfile"
UNITS = REPO / "deploy" / "systemd"


def instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions as (KEYWORD, arguments), continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends in a line continuation"
    return out


def test_instruction_parser() -> None:
    text = "# c\nFROM a AS b\nRUN x \\\n  && y\n\nUSER 1:1\n"
    assert instructions(text) == [("FROM", "a AS b"), ("RUN", "x && y"), ("USER", "1:1")]


def test_dockerfile_builds_from_the_repo_and_runs_as_the_charts_user() -> None:
    ins = instructions(DOCKERFILE.read_text())
    keywords = [k for k, _ in ins]
    known = {"FROM", "WORKDIR", "COPY", "RUN", "ARG", "ENV", "USER", "VOLUME", "EXPOSE", "CMD"}
    assert set(keywords) <= known
    froms = [a for k, a in ins if k == "FROM"]
    assert all(a.split()[0] == "python:3.11-slim" for a in froms)
    # every COPY from the context names something that exists in the repository
    for k, a in ins:
        if k == "COPY" and not a.startswith("--from"):
            for src in a.split()[:-1]:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
    assert any("pip wheel" in a and a.rstrip().endswith(".") for k, a in ins if k == "RUN")
    # the last USER is the non-root uid the chart runs as
    user = [a for k, a in ins if k == "USER"][-1]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert user == f"{values['runAsUser']}:{values['runAsGroup']}"
    assert int(user.split(":")[0]) != 0
    # the image exposes the ports the chart uses
    exposed = {int(p) for k, a in ins if k == "EXPOSE" for p in a.split()}
    sn, dd = values["supernode"], values["dfdaemon"]
    assert {sn["port"], sn["downloadPort"], dd["port"], dd["peerPort"]} <= exposed


def test_image_entrypoints_are_the_projects_console_scripts() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    ins = instructions(DOCKERFILE.read_text())
    cmd = [a for k, a in ins if k == "CMD"][-1]
    assert cmd.startswith('["supernode"')
    templates = "".join(p.read_text() for p in (CHART / "templates").glob("*.yaml"))
    for name in ("supernode", "dfdaemon"):
        assert name in scripts
        assert f"command: [{name}]" in templates


@pytest.mark.skipif(
    shutil.which("hadolint") is None,
    reason="hadolint not on PATH (not packaged in Debian or on PyPI here)",
)
def test_hadolint() -> None:
    proc = subprocess.run(
        ["hadolint", "--ignore", "DL3013", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _verify(tmp_path: Path, units: list[Path]) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on copies whose ExecStart points at the installed scripts."""
    copies = []
    for unit in units:
        text = unit.read_text()
        for name in ("supernode", "dfdaemon"):
            found = shutil.which(name)
            if found is None:
                pytest.skip(f"{name} is not installed (pip install -e .)")
            text = text.replace(f"/usr/local/bin/{name} ", f"{found} ")
        copy = tmp_path / unit.name
        copy.write_text(text)
        copies.append(str(copy))
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *copies],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze missing (Debian: systemd)"
)
def test_systemd_units_verify_clean(tmp_path: Path) -> None:
    units = sorted(UNITS.glob("*.service"))
    assert [u.name for u in units] == ["dfdaemon.service", "supernode.service"]
    proc = _verify(tmp_path, units)
    # systemd-analyze reports unknown keys and bad values on stderr, even with exit status 0
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze missing (Debian: systemd)"
)
def test_systemd_verify_catches_a_typo(tmp_path: Path) -> None:
    broken = tmp_path / "src"
    broken.mkdir()
    text = (UNITS / "supernode.service").read_text().replace("ProtectSystem=", "ProtectSytem=")
    (broken / "supernode.service").write_text(text)
    proc = _verify(tmp_path, [broken / "supernode.service"])
    assert "ProtectSytem" in proc.stderr


@pytest.mark.parametrize("unit", ["supernode.service", "dfdaemon.service"])
def test_units_are_hardened(unit: str) -> None:
    text = (UNITS / unit).read_text()
    settings = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in text.splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert settings["NoNewPrivileges"] == "yes"
    assert settings["ProtectSystem"] == "strict"
    assert settings["User"] == "damselfly"
    assert settings["StateDirectory"].startswith("damselfly/")
    assert settings["CapabilityBoundingSet"] == ""
    home = "/var/lib/" + settings["StateDirectory"]
    assert home in settings["ExecStart"]  # the daemon writes only to its state directory
