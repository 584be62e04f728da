"""Distributed old-logit service: exact training-side log-probs by policy version.

Importing this package is cheap: torch, transformers and the gRPC server load only when used.
"""

from logit_common import __version__  # the one source of the version, shared with the client

__all__ = ["__version__"]
