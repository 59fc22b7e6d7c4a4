"""Password checks answer True or False for any string a client can send, never an error."""

from __future__ import annotations

import pytest

from lanes.passwords import PasswordHasher
from lanes.settings import Settings


@pytest.fixture(scope="module")
def hasher() -> PasswordHasher:
    return PasswordHasher(Settings(argon2_memory_kib=1024, argon2_rounds=1))


@pytest.mark.parametrize("known_user", [True, False])
def test_a_password_over_passlibs_limit_is_wrong_for_known_and_unknown_users_alike(
    hasher: PasswordHasher, known_user: bool
) -> None:
    stored = hasher.hash("correct horse battery") if known_user else None
    assert hasher.verify("x" * 5000, stored) is False
    assert hasher.verify("é" * 2100, stored) is False  # 4,200 bytes in UTF-8


def test_the_right_password_still_verifies(hasher: PasswordHasher) -> None:
    assert hasher.verify("correct horse battery", hasher.hash("correct horse battery")) is True
