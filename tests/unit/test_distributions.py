"""The two distributions split the packages between them: the client one (clients/) carries the client
and the shared layer and nothing of the server, the server one only the server, and no package (so no
installed file) belongs to both. Both read the version from the one place it is written."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]


def _packages(project_dir: Path) -> set[str]:
    find = tomllib.loads((project_dir / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    return set(find_packages(where=str(project_dir), include=find["include"]))


def test_no_package_belongs_to_both_distributions():
    client, server = _packages(ROOT / "clients"), _packages(ROOT)
    assert {"logit_client", "logit_common", "logit_common.v1", "logit_common.snapshots"} <= client
    assert not any(name.startswith("logit_service") for name in client)
    assert "logit_service" in server and all(name.startswith("logit_service") for name in server)
    assert client.isdisjoint(server)


def test_the_client_distribution_has_the_extras_and_ships_the_proto():
    project = tomllib.loads((ROOT / "clients" / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    # publishing writes snapshots (torch, safetensors) and uploads compact differences (numcodecs' Blosc)
    assert {re.split("[<>=]", r)[0] for r in extras["publish"]} == {"torch", "safetensors", "numcodecs"}
    assert [r.split(">")[0] for r in extras["routing"]] == ["redis"]
    assert any(r.startswith("grpcio-status") for r in project["project"]["dependencies"])
    data = project["tool"]["setuptools"]["package-data"]
    assert "*.proto" in data["logit_common.v1"] and "py.typed" in data["logit_client"]
    assert (ROOT / "clients" / "logit_common" / "v1" / "logit_service.proto").is_file()


def test_one_source_of_the_version():
    client = tomllib.loads((ROOT / "clients" / "pyproject.toml").read_text())["tool"]["setuptools"]["dynamic"]
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["dynamic"]
    assert client["version"]["attr"] == "logit_common.__version__"
    assert server["version"]["attr"] == "clients.logit_common.__version__"  # the same file, seen from the root
    import logit_client
    import logit_common
    import logit_service

    assert logit_client.__version__ == logit_service.__version__ == logit_common.__version__
