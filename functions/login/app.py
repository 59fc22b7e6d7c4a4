"""The login function: POST /login and POST /logout. The only function that signs tokens."""

from __future__ import annotations

from flask import Flask, Response, jsonify

from lanes import validation
from lanes.db import connect, ping
from lanes.logs import configure_logging
from lanes.passwords import PasswordHasher
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
    sessions = Sessions(
        Users(db, PasswordHasher(settings)),
        TokenService(settings, can_sign=True),
        Revocations.from_settings(db, settings),
        LoginThrottle(db, settings),
    )
    proxies = settings.proxies
    app = create_base_app("login", settings)
    app.register_blueprint(health_blueprint({"database": lambda: ping(db)}))

    @app.post("/login")
    def login() -> Response:
        credentials = validation.credentials(json_body(), check_rules=False)
        issued = sessions.login(credentials, client_address(proxies))
        return jsonify({"access_token": issued.access_token, "token_type": "Bearer", "expires_in": issued.expires_in})

    @app.post("/logout")
    def logout() -> tuple[str, int]:
        _user, claims = authenticate(sessions)
        sessions.logout(claims)
        return "", 204

    return app
