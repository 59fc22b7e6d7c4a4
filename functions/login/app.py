"""The login function: POST /login and POST /logout. The only function that signs tokens."""

from __future__ import annotations

from flask import Flask, Response, jsonify

from lanes import revocation_push, validation
from lanes.db import connect, ensure_indexes, ping
from lanes.errors import DatabaseError
from lanes.logs import configure_logging
from lanes.passwords import PasswordHasher
from lanes.proxies import address_key
from lanes.ratelimit import RateLimiter
from lanes.revocations import Revocations
from lanes.settings import Settings, load_settings
from lanes.throttle import LoginThrottle
from lanes.tokens import TokenService
from lanes.users import Sessions, Users
from lanes.web import authenticate, client_address, create_base_app, health_blueprint, json_body


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    configure_logging("login", settings.log_level)
    db = connect(settings)
    try:
        ensure_indexes(db)  # login_failures' among them
    except DatabaseError:
        pass  # the database may come up after us; enqueue and the worker create them too
    # Pushes what it revokes to the other functions, and hears what they revoke (an
    # operator's delete-user): lanes.revocations.
    revocations = Revocations.from_settings(db, settings, publish=revocation_push.publisher(settings))
    revocation_push.listen(revocations, settings)
    sessions = Sessions(
        Users(db, PasswordHasher(settings)),
        TokenService(settings, can_sign=True),
        revocations,
        LoginThrottle(db, settings),
    )
    # Per client address, in this process's memory, right passwords too: refusing costs
    # no hash (19 MiB of argon2) and no round trip.
    per_minute = settings.login_per_address_per_minute
    per_address = RateLimiter(per_minute / 60, per_minute)
    proxies = settings.proxies
    app = create_base_app("login", settings)
    app.register_blueprint(health_blueprint({"database": lambda: ping(db)}))

    @app.after_request
    def no_store(response: Response) -> Response:
        # A token (or a refusal about one's password) is kept by no cache on the way.
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
        return response

    @app.post("/login")
    def login() -> Response:
        address = client_address(proxies)
        key = (address_key(address) if address else None) or "unknown"
        per_address.check(key, "Too many logins from your address; try again later.", code="login_throttled")
        credentials = validation.credentials(json_body(), check_rules=False)
        issued = sessions.login(credentials, address)
        return jsonify({"access_token": issued.access_token, "token_type": "Bearer", "expires_in": issued.expires_in})

    @app.post("/logout")
    def logout() -> tuple[str, int]:
        _user, claims = authenticate(sessions)
        sessions.logout(claims)
        return "", 204

    return app
