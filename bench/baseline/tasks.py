"""The Celery baseline: Lanes' `echo` work as a Celery task on the same RabbitMQ and database.

Configured as a careful Celery user would for durability: publisher confirms, and
late acknowledgement (a task lost with its worker runs again). Each task stores its
record (user, sequence number, start and finish) in MongoDB -- here the same FerretDB
Lanes uses -- with one insert by `_id`, before it is acknowledged; the benchmark reads
these to time the run and count ordering violations per user.

Celery's own MongoDB result backend is not used: it stores with the filter
`{_id, status: {$ne: SUCCESS}}`, which FerretDB answers by scanning the whole
collection (about 130 ms per result at 2,000 results on this machine), and that
would measure FerretDB's planner rather than Celery.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pymongo
from celery import Celery

QUEUE = "bench.celery"
COLLECTION = "celery_results"

app = Celery("bench")
app.conf.update(
    broker_url=os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    broker_transport_options={"confirm_publish": True},
    broker_connection_retry_on_startup=True,
    task_acks_late=True,
    task_ignore_result=True,
    task_default_queue=QUEUE,
    task_serializer="json",
    accept_content=["json"],
    worker_enable_remote_control=False,
    worker_send_task_events=False,
)

_results: dict[int, Any] = {}


def results() -> Any:
    """This process's results collection (pymongo clients must not cross a fork)."""
    pid = os.getpid()
    if pid not in _results:
        uri = os.environ.get("BENCH_CELERY_RESULTS", "mongodb://127.0.0.1:27017/bench_celery")
        _results[pid] = pymongo.MongoClient(uri).get_default_database()[COLLECTION]
    return _results[pid]


@app.task(name="bench.echo", bind=True)
def echo(self: Any, user: str, seq: int, data: Any) -> None:
    started = time.time()
    result = data  # what Lanes' `echo` action returns
    record = {"_id": self.request.id, "user": user, "seq": seq, "result": result, "started": started}
    results().insert_one({**record, "finished": time.time()})
