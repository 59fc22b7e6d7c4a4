"""The status function: read, list and cancel one's own requests; the stack's probes."""

from __future__ import annotations

from flask import Flask, Response, jsonify, request

from lanes import revocation_push, validation
from lanes.broker import check_connection
from lanes.db import connect, ping
from lanes.httpmetrics import add_collector
from lanes.lanestats import LaneStats
from lanes.logs import configure_logging
from lanes.openapi import load_openapi
from lanes.ratelimit import RateLimiter
from lanes.requests import Requests, listed_view, public_view
from lanes.revocations import Revocations
from lanes.settings import Settings, load_settings
from lanes.sweeper import start_sweeper
from lanes.tokens import TokenService
from lanes.users import Sessions, User, Users
from lanes.web import authenticate, create_base_app, health_blueprint


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    configure_logging("status", settings.log_level)
    db = connect(settings)
    revocations = Revocations.from_settings(db, settings)
    revocation_push.listen(revocations, settings)  # logouts elsewhere, applied as they are published
    sessions = Sessions(Users(db), TokenService(settings, can_sign=False), revocations)
    requests = Requests(db)
    # Per user, in this process's memory: refusing costs no round trip (lanes.ratelimit).
    per_user = RateLimiter(settings.status_rate_per_second, settings.status_burst)

    def caller() -> User:
        user, _claims = authenticate(sessions)
        per_user.check(user.id, "Too many requests from you; slow down.", code="rate_limited")
        return user

    app = create_base_app("status", settings)
    app.register_blueprint(
        health_blueprint({"database": lambda: ping(db), "broker": lambda: check_connection(settings)})
    )
    # The backlog as a whole: exported here because it must be seen while no worker runs.
    add_collector(app, LaneStats(settings, db))
    # Repairs run where something always runs: this function, also while the worker is at zero.
    start_sweeper(settings)

    api_description = load_openapi()

    @app.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(api_description)

    @app.get("/requests/<request_id>")
    def get_request(request_id: str) -> Response:
        user = caller()
        record = requests.get_owned(validation.request_id(request_id), user.id)
        return jsonify(public_view(record))

    @app.delete("/requests/<request_id>")
    def cancel_request(request_id: str) -> Response:
        user = caller()
        record = requests.cancel(validation.request_id(request_id), user.id)
        return jsonify(public_view(record))

    @app.get("/requests")
    def list_requests() -> Response:
        user = caller()
        query = validation.list_query(request.args.to_dict(flat=True))
        page = requests.list_owned(user.id, query.status, query.limit, query.after)
        items = [listed_view(record, settings.listing_result_max_bytes) for record in page.items]
        return jsonify({"items": items, "next_after": page.next_after})

    return app
