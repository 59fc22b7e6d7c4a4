"""Password checks answer True or False for any string a client can send, never an error."""

from __future__ import annotations

import subprocess
import sys

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


# Written by passlib 1.7.4 before Lanes moved to libpass: stored hashes keep verifying.
_STORED_BY_PASSLIB_1_7_4 = {
    (1024, 1): "$argon2id$v=19$m=1024,t=1,p=1$rpWSEkJI6Z0z5vy/F4JwLg$2mx5byLy/X6kLq6lLw2ytstdVRu/H7BJojYrKamMvOk",
    (19456, 2): "$argon2id$v=19$m=19456,t=2,p=1$as05R2hN6X1PCeHcm7P2Xg$L1H7aIje5/KzXRVDMHIK7gbNZzRnR7XxGGXMhlBIuA0",
}


@pytest.mark.parametrize(("cost", "stored"), _STORED_BY_PASSLIB_1_7_4.items())
def test_hashes_stored_before_the_move_to_libpass_still_verify(cost: tuple[int, int], stored: str) -> None:
    hasher = PasswordHasher(Settings(argon2_memory_kib=cost[0], argon2_rounds=cost[1]))
    assert hasher.verify("correct horse battery", stored) is True
    assert hasher.verify("correct horse batterY", stored) is False


def test_new_hashes_keep_the_argon2id_parameters() -> None:
    settings = Settings()
    stored = PasswordHasher(settings).hash("correct horse battery")
    assert stored.startswith(f"$argon2id$v=19$m={settings.argon2_memory_kib},t={settings.argon2_rounds},p=1$")


def test_hashing_passwords_raises_no_warnings() -> None:
    # A fresh interpreter: the warnings come from imports, which this one has already done.
    script = "from lanes.passwords import PasswordHasher; from lanes.settings import Settings\n"
    script += "h = PasswordHasher(Settings(argon2_memory_kib=1024, argon2_rounds=1)); assert h.verify('p', h.hash('p'))"
    subprocess.run([sys.executable, "-W", "error", "-c", script], check=True, timeout=60)
