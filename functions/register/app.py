"""The register function: POST /register."""

from __future__ import annotations

from flask import Flask, Response, jsonify

from lanes import validation
from lanes.db import connect, ping
from lanes.logs import configure_logging
from lanes.passwords import PasswordHasher
from lanes.proxies import address_key
from lanes.ratelimit import RateLimiter
from lanes.settings import Settings, load_settings
from lanes.users import Users
from lanes.web import client_address, create_base_app, health_blueprint, json_body


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    configure_logging("register", settings.log_level)
    db = connect(settings)
    users = Users(db, PasswordHasher(settings))
    # Per client address, in this process's memory: refusing costs no hash and no round trip.
    per_address = RateLimiter(settings.register_per_minute / 60, settings.register_per_minute)
    proxies = settings.proxies
    app = create_base_app("register", settings)
    app.register_blueprint(health_blueprint({"database": lambda: ping(db)}))

    @app.post("/register")
    def register() -> tuple[Response, int]:
        # An IPv6 client by its /64, as the login throttle keys it: one host commonly
        # holds a whole /64 and could otherwise take a fresh address per call.
        address = client_address(proxies)
        key = (address_key(address) if address else None) or "unknown"
        per_address.check(key, "Too many registrations from your address; try later.", code="register_throttled")
        credentials = validation.credentials(json_body(), check_rules=True)
        user = users.register(credentials)
        return jsonify({"id": user.id, "username": user.username}), 201

    return app
