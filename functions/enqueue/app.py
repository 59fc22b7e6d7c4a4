"""The enqueue function: POST /enqueue puts a request at the tail of the caller's lane."""

from __future__ import annotations

from flask import Flask, Response, g, jsonify, request

from lanes import correlation, revocation_push, validation
from lanes.actions import build_registry
from lanes.broker import ChannelPool, check_connection
from lanes.db import connect, ensure_indexes, ping
from lanes.errors import DatabaseError
from lanes.lane.admission import partition_publisher
from lanes.lane.partitions import check_partition_count
from lanes.logs import configure_logging
from lanes.queueing import Enqueuer
from lanes.ratelimit import RateLimiter
from lanes.requests import Requests, public_view
from lanes.revocations import Revocations
from lanes.settings import Settings, load_settings
from lanes.tokens import TokenService
from lanes.users import Sessions, Users
from lanes.web import authenticate, create_base_app, health_blueprint, json_body


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    configure_logging("enqueue", settings.log_level)
    db = connect(settings)
    try:
        ensure_indexes(db)
    except DatabaseError:
        pass  # the database may come up after us; the worker creates the indexes too
    check_partition_count(db, settings)
    revocations = Revocations.from_settings(db, settings)
    revocation_push.listen(revocations, settings)  # logouts elsewhere, applied as they are published
    sessions = Sessions(Users(db), TokenService(settings, can_sign=False), revocations)
    known_actions = build_registry(settings).names
    requests = Requests(db)
    pool = ChannelPool(settings)
    enqueuer = Enqueuer(settings, requests, partition_publisher(settings, pool, requests))
    # Per user, in this process's memory: the limit costs no round trip (lanes.ratelimit).
    per_user = RateLimiter(settings.enqueue_rate_per_second, settings.enqueue_burst)
    app = create_base_app("enqueue", settings)
    app.register_blueprint(
        health_blueprint({"database": lambda: ping(db), "broker": lambda: check_connection(settings)})
    )

    @app.post("/enqueue")
    def enqueue() -> tuple[Response, int]:
        user, _claims = authenticate(sessions)
        per_user.check(user.id, "Too many requests from you; slow down.", code="rate_limited")
        body = validation.enqueue_body(json_body(), known_actions)
        g.action = body.action
        key = validation.idempotency_key(request.headers.get("Idempotency-Key"))
        accepted = enqueuer.enqueue(user.id, body, key, correlation.current())
        g.request_id = accepted.record["_id"]
        if not accepted.created:
            return jsonify(public_view(accepted.record)), 200
        response = jsonify({"request_id": accepted.record["_id"], "status": "queued", "position": accepted.position})
        response.headers["Location"] = f"/requests/{accepted.record['_id']}"
        return response, 202

    return app
