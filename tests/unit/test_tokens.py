import base64
import json
import time
from pathlib import Path

import jwt
import pytest

from lanes.errors import AuthError, ConfigError
from lanes.settings import Settings
from lanes.tokens import TokenService, ensure_local_keys

SECRET = "s" * 40


@pytest.fixture
def hs_tokens() -> TokenService:
    return TokenService(Settings(jwt_secret=SECRET))


@pytest.fixture
def ed_settings(tmp_path: Path) -> Settings:
    private, public = ensure_local_keys(tmp_path / "keys")
    return Settings(jwt_private_key_file=str(private), jwt_public_key_file=str(public))


def test_issued_token_verifies_with_required_claims(hs_tokens: TokenService) -> None:
    issued = hs_tokens.issue("u1", "alice")
    claims = hs_tokens.verify(issued.access_token)
    assert (claims.user_id, claims.username_key, claims.jti) == ("u1", "alice", issued.jti)
    assert issued.expires_in == 900


def test_asymmetric_keys_sign_only_where_the_private_key_is(ed_settings: Settings) -> None:
    signer = TokenService(ed_settings, can_sign=True)
    verifier = TokenService(Settings(jwt_public_key_file=ed_settings.jwt_public_key_file), can_sign=False)
    token = signer.issue("u1", "alice").access_token
    assert jwt.get_unverified_header(token)["kid"] == "lanes-1"
    assert verifier.verify(token).user_id == "u1"
    with pytest.raises(ConfigError):
        verifier.issue("u1", "alice")


def test_local_keys_are_made_once(tmp_path: Path) -> None:
    first = ensure_local_keys(tmp_path)
    content = first[0].read_bytes()
    assert ensure_local_keys(tmp_path) == first
    assert first[0].read_bytes() == content
    assert first[0].stat().st_mode & 0o777 == 0o600


def _b64(part: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def _forged(claims: dict[str, object], alg: str = "none") -> str:
    return f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64(claims)}."


def _claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims = {"sub": "u1", "usr": "alice", "jti": "j", "iat": now, "exp": now + 60, "iss": ISSUER, "aud": "lanes-api"}
    return {**claims, **overrides}


ISSUER = Settings().token_issuer


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b.c",
        _forged(_claims()),
        jwt.encode(_claims(), "another-secret-of-sufficient-length!!", algorithm="HS256"),
        jwt.encode(_claims(exp=int(time.time()) - 60), SECRET, algorithm="HS256"),
        jwt.encode({k: v for k, v in _claims().items() if k != "jti"}, SECRET, algorithm="HS256"),
        jwt.encode(_claims(iss="someone-else"), SECRET, algorithm="HS256"),
        jwt.encode(_claims(aud="another-api"), SECRET, algorithm="HS256"),
        jwt.encode({k: v for k, v in _claims().items() if k != "aud"}, SECRET, algorithm="HS256"),
        # A token of another deployment that shares the key: its issuer names that deployment.
        jwt.encode(_claims(iss=Settings(queue_prefix="staging").token_issuer), SECRET, algorithm="HS256"),
        jwt.encode(_claims(sub=42), SECRET, algorithm="HS256"),
        jwt.encode(_claims(), SECRET * 2, algorithm="HS512"),
    ],
)
def test_bad_tokens_are_refused(hs_tokens: TokenService, token: str) -> None:
    with pytest.raises(AuthError):
        hs_tokens.verify(token)


def test_tampered_payload_is_refused(hs_tokens: TokenService) -> None:
    header, _payload, signature = hs_tokens.issue("u1", "alice").access_token.split(".")
    tampered = f"{header}.{_b64(_claims(sub='admin'))}.{signature}"
    with pytest.raises(AuthError):
        hs_tokens.verify(tampered)


def test_expired_token_says_so(hs_tokens: TokenService) -> None:
    with pytest.raises(AuthError) as raised:
        hs_tokens.verify(jwt.encode(_claims(exp=int(time.time()) - 60), SECRET, algorithm="HS256"))
    assert raised.value.code == "token_expired"


def test_no_key_configured_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        TokenService(Settings())


def test_rotation_accepts_every_listed_key_by_its_kid(tmp_path: Path) -> None:
    old_private, old_public = ensure_local_keys(tmp_path / "old")
    new_private, new_public = ensure_local_keys(tmp_path / "new")
    old_signer = TokenService(
        Settings(jwt_private_key_file=str(old_private), jwt_public_key_file=str(old_public), jwt_key_id="old")
    )
    new_signer = TokenService(
        Settings(jwt_private_key_file=str(new_private), jwt_public_key_file=str(new_public), jwt_key_id="new")
    )
    verifier = TokenService(
        Settings(jwt_public_key_file=f"old={old_public},new={new_public}", jwt_key_id="new"), can_sign=False
    )
    assert verifier.verify(old_signer.issue("u1", "alice").access_token).user_id == "u1"
    assert verifier.verify(new_signer.issue("u2", "bob").access_token).user_id == "u2"

    claims = _claims(sub="u", usr="u")
    mislabelled = jwt.encode(claims, new_private.read_bytes(), algorithm="EdDSA", headers={"kid": "old"})
    unknown = jwt.encode(claims, new_private.read_bytes(), algorithm="EdDSA", headers={"kid": "retired"})
    for token in (mislabelled, unknown):
        with pytest.raises(AuthError):
            verifier.verify(token)


def test_tokens_name_this_deployment_and_the_api() -> None:
    claims = jwt.decode(
        TokenService(Settings(jwt_secret=SECRET)).issue("u1", "alice").access_token,
        SECRET,
        algorithms=["HS256"],
        audience="lanes-api",
    )
    assert (claims["iss"], claims["aud"]) == ("lanes:lanes/lanes", "lanes-api")
    assert Settings(jwt_issuer="https://lanes.example.org").token_issuer == "https://lanes.example.org"


def test_tokens_from_before_the_audience_are_honoured_until_they_expire() -> None:
    # Given a token as the previous version signed it (issuer `lanes`, no `aud`), before this process started
    legacy = {k: v for k, v in _claims(iss="lanes", iat=int(time.time()) - 60).items() if k != "aud"}
    verifier = TokenService(Settings(jwt_secret=SECRET))
    assert verifier.verify(jwt.encode(legacy, SECRET, algorithm="HS256")).user_id == "u1"
    # But one of that shape signed after the process started is no leftover of an upgrade
    with pytest.raises(AuthError):
        verifier.verify(jwt.encode({**legacy, "iat": int(time.time()) + 2, "jti": "k"}, SECRET, algorithm="HS256"))
    # And an expired one stays expired
    with pytest.raises(AuthError):
        verifier.verify(jwt.encode({**legacy, "exp": int(time.time()) - 60, "jti": "l"}, SECRET, algorithm="HS256"))
