"""Optional dependencies: the error to raise when one is missing, naming the extra that installs it.

The client's base install is grpc, protobuf and numpy. Publishing (and the loss and EWMA code, which
work on tensors) needs torch and safetensors, the extra `publish`; Redis-based replica discovery needs
redis, the extra `routing`. Modules import these where they are used, inside

    try:
        import torch
    except ModuleNotFoundError as e:
        raise missing_extra(e, extra="publish", needed_for="...") from e
"""

from __future__ import annotations

DISTRIBUTION = "logit-client"
EXTRA_PACKAGES = {"publish": ("torch", "safetensors"), "routing": ("redis",)}


def missing_extra(error: ModuleNotFoundError, *, extra: str, needed_for: str) -> ModuleNotFoundError:
    """The error for `error`: names the extra when the missing module is one the extra brings; any other
    missing module (a broken install of the package itself) is returned as it is, since it says more."""
    missing = (error.name or "").partition(".")[0]
    if missing not in EXTRA_PACKAGES[extra]:
        return error
    return ModuleNotFoundError(
        f"{needed_for} needs {missing}, which is not installed: pip install '{DISTRIBUTION}[{extra}]'",
        name=error.name,
    )
