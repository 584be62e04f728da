"""The one thing pyproject.toml cannot say: the server depends on the client distribution in clients/.

That distribution (`logit-client`) carries the layer both sides import (errors, domain types, the
generated API, the snapshot format, the EWMA arithmetic, the version), so the server needs it. It is
not on a package index, so the requirement names it by path, made absolute here (a requirement's URL
must be): `pip install -e ".[dev]"` from anywhere installs both. The path points into this checkout,
so a wheel built from it is for local installs, not for an index.
"""

from pathlib import Path

from setuptools import setup

CLIENT_DISTRIBUTION = (Path(__file__).resolve().parent / "clients").as_uri()

setup(
    install_requires=[
        f"logit-client @ {CLIENT_DISTRIBUTION}",
        "grpcio>=1.85.1",
        "grpcio-health-checking>=1.85.1",
        "grpcio-status>=1.85.1",
        "protobuf>=7.35.1,<8",
        "numpy>=1.26",
        "pydantic>=2.7",
    ]
)
