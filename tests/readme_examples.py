"""The README's grpcurl example, read from the README itself, so the tests check what readers copy."""

from __future__ import annotations

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def grpcurl_example() -> dict:
    """The pieces of the README's grpcurl example: the snippet's token ids, its printed base64, the request JSON."""
    text = README.read_text()
    section = text[text.index("### From any language: grpcurl") :]
    section = section[: section.index("\n### ", 1)]
    ids = re.search(r"np\.array\(\[([0-9, ]+)\], '<i4'\)", section)
    printed = re.search(r"^# (\S+)\s+\(token ids", section, re.MULTILINE)
    request = re.search(r"grpcurl -plaintext -emit-defaults -d '(\{.*?\})' \\\n\s+(\S+) (\S+)\n", section)
    assert ids and printed and request, "the README's grpcurl example is not in the expected form"
    return {
        "token_ids": [int(t) for t in ids.group(1).split(",")],
        "printed_base64": printed.group(1),
        "request_json": json.loads(request.group(1)),
        "target": request.group(2),
        "method": request.group(3),
    }
