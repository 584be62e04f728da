"""Distributed old-logit service: exact training-side log-probs by policy version.

Importing this package is cheap: torch, transformers and the gRPC server load only when used.
"""

__version__ = "0.1.0"
