"""What the old-logit service and its client share: errors, domain types, the generated API, the
snapshot format and its writer, the EWMA arithmetic, the version.

The client distribution (`logit-client`) carries this package and the server imports it, so neither
side depends on the other: the client never imports `logit_service`, and the server never imports the
client's higher modules. Importing this package itself loads nothing (it is only the version).
"""

__version__ = "0.1.0"
"""The one source of the version: both distributions read it (see the two pyproject.toml files)."""
