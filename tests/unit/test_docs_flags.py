"""The security page and the README's limits paragraph name only flags and variables `serve` accepts."""

from __future__ import annotations

import re
from pathlib import Path

from logit_service import cli
from logit_service.config import ENV_PREFIX, ServerConfig

ROOT = Path(__file__).resolve().parents[2]
SERVE_FLAGS = {cli._flag(name) for name in ServerConfig.model_fields}
SERVE_VARIABLES = {ENV_PREFIX + name.upper() for name in ServerConfig.model_fields}


def _limits_paragraph() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("**Limits.**")
    return readme[start : readme.index("\n\n", start)]


def test_flags_and_variables_in_the_security_page_and_limits_paragraph_exist():
    text = (ROOT / "docs" / "security.md").read_text() + _limits_paragraph()
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", text))
    variables = set(re.findall(rf"{ENV_PREFIX}[A-Z_]+", text))

    assert {"--max-request-bytes", "--max-inflight-request-bytes", "--max-lease-holders"} <= flags
    assert flags <= SERVE_FLAGS, sorted(flags - SERVE_FLAGS)
    assert variables <= SERVE_VARIABLES, sorted(variables - SERVE_VARIABLES)
