"""Moved to `logit_common.snapshots.compact` (carried by the client distribution, imported by the server); this path stays
importable for existing code as the very same module object, so attributes and monkeypatches agree."""

import importlib
import sys

from logit_common.snapshots.compact import *  # noqa: F401,F403  (names for readers and type checkers; the alias below is what counts)

sys.modules[__name__] = importlib.import_module("logit_common.snapshots.compact")
