"""JWT access tokens: PyJWT, one pinned algorithm, required claims, optional asymmetric keys."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanes.errors import AuthError, ConfigError
from lanes.settings import Settings

REQUIRED_CLAIMS = ["exp", "iat", "sub", "jti", "usr"]
# Tokens signed before `aud` and per-deployment issuers existed carried this issuer and no
# audience. They are honoured when signed before this process started (so an upgrade logs
# no one out) and only until they expire, JWT_EXPIRES_SECONDS (15 minutes) at most.
LEGACY_ISSUER = "lanes"
LEEWAY_SECONDS = 5
# Tokens whose signature this process has checked, kept so a user's next call skips the
# check (an EdDSA verify is ~0.3 ms of CPU); beyond this many, the memory starts over.
VERIFIED_MAX = 10_000
PRIVATE_KEY_NAME, PUBLIC_KEY_NAME = "jwt-ed25519.pem", "jwt-ed25519.pub.pem"


@dataclass(frozen=True)
class Claims:
    user_id: str
    username_key: str
    jti: str
    expires_at: int


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    jti: str


class TokenService:
    """Signs (when it holds the signing key) and verifies access tokens."""

    def __init__(self, settings: Settings, *, can_sign: bool = True) -> None:
        self._settings = settings
        self._issuer = settings.token_issuer
        self._audience = settings.jwt_audience
        self._started = int(time.time())
        self._expires = settings.jwt_expires_seconds
        self._kid = settings.jwt_key_id
        if settings.jwt_public_key_file:
            # Asymmetric: only the login function is given the private key.
            self.algorithm = "EdDSA"
            self._verify_keys = _public_keys(settings.jwt_public_key_file, settings.jwt_key_id)
            self._sign_key = (
                Path(settings.jwt_private_key_file).read_bytes() if can_sign and settings.jwt_private_key_file else None
            )
        elif settings.jwt_secret:
            self.algorithm = "HS256"
            self._sign_key = settings.jwt_secret.encode()
            self._verify_keys = {self._kid: self._sign_key}
        else:
            raise ConfigError("Set JWT_PUBLIC_KEY_FILE (and JWT_PRIVATE_KEY_FILE) or JWT_SECRET")
        self._verified: dict[str, Claims] = {}

    def issue(self, user_id: str, username_key: str) -> IssuedToken:
        if self._sign_key is None:
            raise ConfigError("This function holds no signing key")
        now = int(time.time())
        jti = uuid.uuid4().hex
        claims = {
            "sub": user_id,
            "usr": username_key,
            "iat": now,
            "exp": now + self._expires,
            "jti": jti,
            "iss": self._issuer,
            "aud": self._audience,
        }
        token = jwt.encode(claims, self._sign_key, algorithm=self.algorithm, headers={"kid": self._kid})
        return IssuedToken(access_token=token, expires_in=self._expires, jti=jti)

    def verify(self, token: str) -> Claims:
        """Claims of a valid token; AuthError for anything else (expired, tampered, unsigned, ...)."""
        known = self._verified.get(token)  # the very same bytes, signature checked before
        if known is not None and known.expires_at + LEEWAY_SECONDS >= time.time():
            return known
        claims = self._check(token)
        if len(self._verified) >= VERIFIED_MAX:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    def _legacy(self, token: str, key: bytes) -> dict[str, Any]:
        """The claims of a token signed before `aud` existed, or AuthError (see LEGACY_ISSUER)."""
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[self.algorithm],
            issuer=LEGACY_ISSUER,
            options={"require": [*REQUIRED_CLAIMS, "iss"], "verify_aud": False},
            leeway=LEEWAY_SECONDS,
        )
        if "aud" in claims or not isinstance(claims["iat"], int) or claims["iat"] > self._started:
            raise AuthError("The token is not valid.", code="invalid_token")
        return claims

    def _check(self, token: str) -> Claims:
        try:
            kid = jwt.get_unverified_header(token).get("kid", self._kid)
            key = self._verify_keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise AuthError("The token's signing key is unknown.", code="invalid_token")
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[self.algorithm],
                    issuer=self._issuer,
                    audience=self._audience,
                    options={"require": [*REQUIRED_CLAIMS, "iss", "aud"]},
                    leeway=LEEWAY_SECONDS,
                )
            except (jwt.MissingRequiredClaimError, jwt.InvalidIssuerError):
                claims = self._legacy(token, key)
        except jwt.ExpiredSignatureError:
            raise AuthError("The token has expired.", code="token_expired") from None
        except jwt.PyJWTError:
            raise AuthError("The token is not valid.", code="invalid_token") from None
        if not all(isinstance(claims[name], str) for name in ("sub", "usr", "jti")):
            raise AuthError("The token is not valid.", code="invalid_token")
        return Claims(
            user_id=claims["sub"],
            username_key=claims["usr"],
            jti=claims["jti"],
            expires_at=int(claims["exp"]),
        )


def _public_keys(spec: str, default_kid: str) -> dict[str, bytes]:
    """Verification keys by key id, from `path` or `kid=path,kid=path` (key rotation:
    list the new key beside the old one until every token signed with the old expired)."""
    keys: dict[str, bytes] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        kid, _, path = entry.rpartition("=")
        keys[kid or default_kid] = Path(path).read_bytes()
    if not keys:
        raise ConfigError("JWT_PUBLIC_KEY_FILE names no key")
    return keys


def ensure_local_keys(keys_dir: Path) -> tuple[Path, Path]:
    """Create the embedded default's Ed25519 key pair once; return (private, public) paths."""
    private_path, public_path = keys_dir / PRIVATE_KEY_NAME, keys_dir / PUBLIC_KEY_NAME
    if private_path.exists() and public_path.exists():
        return private_path, public_path
    # Private from the first byte: a folder only the owner may enter, a key file created 0600
    # (written 0644 and chmod'ed after, it could be read in between).
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys_dir.chmod(0o700)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_private(private_path, private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def _write_private(path: Path, content: bytes) -> None:
    path.unlink(missing_ok=True)  # a half-written pair from an earlier start
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)
