"""The in-memory registry against the shared registry behaviour, plus the factory's no-Redis path."""

from __future__ import annotations

import subprocess
import sys

import pytest

from logit_service.errors import LeaseLimit
from logit_service.registry.memory import InMemoryRegistry
from tests.registry_checks import BEHAVIOUR_CHECKS, check_id


@pytest.mark.parametrize("check", BEHAVIOUR_CHECKS, ids=check_id)
def test_memory_registry(check) -> None:
    registry = InMemoryRegistry()
    check(registry)
    registry.close()


def test_make_registry_without_url_is_in_memory_and_never_imports_redis() -> None:
    # A fresh interpreter: this test process may already have imported redis for other tests.
    code = (
        "import sys\n"
        "from logit_service.registry.factory import make_registry\n"
        "from logit_service.registry.memory import InMemoryRegistry\n"
        "assert isinstance(make_registry(None), InMemoryRegistry)\n"
        "assert 'redis' not in sys.modules, 'redis was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_holder_limit_error_names_the_version() -> None:
    registry = InMemoryRegistry()
    registry.lease(9, "a", ttl_s=60, max_holders=1)
    with pytest.raises(LeaseLimit, match="^version 9 is already leased by 1 holders"):
        registry.lease(9, "b", ttl_s=60, max_holders=1)


def test_the_holder_with_the_last_expiry_shortening_its_lease_shortens_the_versions_expiry() -> None:
    registry = InMemoryRegistry()
    registry.lease(3, "a", ttl_s=600)
    registry.lease(3, "b", ttl_s=30)
    registry.lease(3, "a", ttl_s=10)  # now b's lease is the last to lapse
    assert 10 < registry.leased_versions()[3] <= 30
