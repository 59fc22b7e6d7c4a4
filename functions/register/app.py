"""The register function: POST /register."""

from __future__ import annotations

from flask import Flask, Response, jsonify

from lanes import validation
from lanes.db import connect, ping
from lanes.logs import configure_logging
from lanes.passwords import PasswordHasher
from lanes.settings import Settings, load_settings
from lanes.users import Users
from lanes.web import create_base_app, health_blueprint, json_body


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    configure_logging("register", settings.log_level)
    db = connect(settings)
    users = Users(db, PasswordHasher(settings))
    app = create_base_app("register", settings)
    app.register_blueprint(health_blueprint({"database": lambda: ping(db)}))

    @app.post("/register")
    def register() -> tuple[Response, int]:
        credentials = validation.credentials(json_body(), check_rules=True)
        user = users.register(credentials)
        return jsonify({"id": user.id, "username": user.username}), 201

    return app
