"""The baselines' HTTP front: the shape of Lanes' enqueue function (Flask on gunicorn with
gevent, behind nginx), doing only what each baseline does.

    POST /bare    publish the JSON body as a persistent message to one durable queue and
                  answer once the broker confirmed it (what Lanes' 202 waits for, at least)
    POST /celery  {user, seq, data}: send it as a Celery task and answer with the task id
"""

from __future__ import annotations

import json
import os
import queue
from collections.abc import Iterator
from contextlib import contextmanager

import pika
from flask import Flask, Response, jsonify, request
from pika.adapters.blocking_connection import BlockingChannel

BARE_QUEUE = "bench.bare"
PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json")


class Channels:
    """Confirm-mode channels, each on its own connection, lent to one greenlet at a time."""

    def __init__(self, url: str) -> None:
        self._parameters = pika.URLParameters(url)
        self._idle: queue.LifoQueue[tuple[pika.BlockingConnection, BlockingChannel]] = queue.LifoQueue()

    @contextmanager
    def channel(self) -> Iterator[BlockingChannel]:
        try:
            connection, channel = self._idle.get_nowait()
        except queue.Empty:
            connection = pika.BlockingConnection(self._parameters)
            channel = connection.channel()
            channel.confirm_delivery()
        try:
            yield channel
        except BaseException:
            connection.close()
            raise
        self._idle.put((connection, channel))


def create_app() -> Flask:
    from bench.baseline.tasks import echo

    channels = Channels(os.environ["BENCH_BARE_URL"])
    with channels.channel() as channel:
        channel.queue_declare(BARE_QUEUE, durable=True)
    app = Flask("baseline")

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.post("/bare")
    def bare() -> tuple[Response, int]:
        body = json.dumps(request.get_json()).encode()
        with channels.channel() as channel:
            channel.basic_publish("", BARE_QUEUE, body, PERSISTENT, mandatory=True)
        return jsonify(status="queued"), 202

    @app.post("/celery")
    def celery() -> tuple[Response, int]:
        body = request.get_json()
        task = echo.apply_async((body["user"], body["seq"], body.get("data")))
        return jsonify(task_id=task.id), 202

    return app
