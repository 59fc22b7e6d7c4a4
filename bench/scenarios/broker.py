"""Broker limit: raw pika on the same RabbitMQ, persistent messages of a Lanes message's size.

The figures are what one Python client (pika) gets from this broker, which is the
ceiling for any Python component of Lanes, not the broker's own limit with many clients.
"""

from __future__ import annotations

import time
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from bench.context import Context
from bench.infra import amqp_url

QUEUE = "bench.raw"
# A Lanes lane message: {"request_id": <32 hex>, "user_id": <32 hex>}.
BODY = b'{"request_id":"0190f3b2c4d57e8f9a0b1c2d3e4f5a6b","user_id":"a1b2c3d4e5f60718293a4b5c6d7e8f90"}'
PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json")


def run(ctx: Context) -> dict[str, Any]:
    vhost = ctx.isolation.vhost("raw")
    url = amqp_url(vhost)
    limit, seconds = ctx.sizes.broker_messages, ctx.sizes.broker_seconds
    try:
        confirm = publish_each(url, limit, seconds)
        ctx.say("broker", f"publish, confirm per message: {confirm['rps']:.0f} msg/s")
        batched = publish_window(url, limit, seconds, window=100)
        ctx.say("broker", f"publish, 100 confirms in flight: {batched['rps']:.0f} msg/s")
        stored = confirm["messages"] + batched["messages"]
        if stored < 2 * limit:  # enough for both consume runs (not timed)
            publish_window(url, 2 * limit - stored, seconds * 4, window=500)
        consume = {}
        for prefetch in (1, 100):
            consume[str(prefetch)] = consume_acking(url, prefetch, limit, seconds)
            ctx.say("broker", f"consume, manual ack, prefetch {prefetch}: {consume[str(prefetch)]['rps']:.0f} msg/s")
    finally:
        ctx.isolation.drop_vhost(vhost)
    return {
        "raw_publish_confirm_rps": confirm["rps"],
        "raw_publish_batched_rps": batched["rps"],
        "raw_consume_rps": {f"prefetch_{k}": v["rps"] for k, v in consume.items()},
        "details": {"publish_confirm": confirm, "publish_batched": batched, "consume": consume},
    }


def _open(url: str) -> tuple[pika.BlockingConnection, BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(QUEUE, durable=True)
    return connection, channel


def publish_each(url: str, limit: int, seconds: float) -> dict[str, Any]:
    """Publish and wait for each message's confirm before the next (what Lanes' enqueue does)."""
    connection, channel = _open(url)
    channel.confirm_delivery()
    sent, start = 0, time.perf_counter()
    end = start + seconds
    while sent < limit and time.perf_counter() < end:
        channel.basic_publish("", QUEUE, BODY, PERSISTENT)
        sent += 1
    elapsed = time.perf_counter() - start
    connection.close()
    return {"messages": sent, "seconds": round(elapsed, 2), "rps": round(sent / elapsed, 1)}


def publish_window(url: str, limit: int, seconds: float, window: int) -> dict[str, Any]:
    """Publish with up to `window` unconfirmed messages in flight (pika's asynchronous adapter)."""
    state: dict[str, Any] = {"sent": 0, "confirmed": 0, "nacked": 0, "start": 0.0, "end": 0.0}
    unconfirmed: set[int] = set()

    def on_open(connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=on_channel)

    def on_channel(channel: Any) -> None:
        state["channel"] = channel
        channel.confirm_delivery(on_confirm)
        channel.queue_declare(QUEUE, durable=True, callback=lambda _frame: begin())

    def begin() -> None:
        state["start"] = time.perf_counter()
        state["stop_at"] = state["start"] + seconds
        fill()

    def fill() -> None:
        channel = state["channel"]
        while len(unconfirmed) < window and state["sent"] < limit and time.perf_counter() < state["stop_at"]:
            channel.basic_publish("", QUEUE, BODY, PERSISTENT)
            state["sent"] += 1
            unconfirmed.add(state["sent"])  # delivery tags count from 1 on a fresh channel
        if not unconfirmed:
            state["end"] = time.perf_counter()
            connection.close()

    def on_confirm(frame: Any) -> None:
        method = frame.method
        tags = [t for t in unconfirmed if t <= method.delivery_tag] if method.multiple else [method.delivery_tag]
        for tag in tags:
            unconfirmed.discard(tag)
        key = "confirmed" if isinstance(method, pika.spec.Basic.Ack) else "nacked"
        state[key] += len(tags)
        fill()

    connection = pika.SelectConnection(
        pika.URLParameters(url),
        on_open_callback=on_open,
        on_open_error_callback=lambda _c, error: connection.ioloop.stop(),
        on_close_callback=lambda _c, _reason: connection.ioloop.stop(),
    )
    connection.ioloop.call_later(seconds + 30, connection.ioloop.stop)  # a bound, whatever happens
    connection.ioloop.start()
    if not state["end"]:
        raise RuntimeError(f"batched publish did not finish: {state}")
    elapsed = state["end"] - state["start"]
    return {
        "messages": state["confirmed"],
        "nacked": state["nacked"],
        "window": window,
        "seconds": round(elapsed, 2),
        "rps": round(state["confirmed"] / elapsed, 1),
    }


def consume_acking(url: str, prefetch: int, limit: int, seconds: float) -> dict[str, Any]:
    """Consume with manual acknowledgement, one ack per message, at the given prefetch."""
    connection, channel = _open(url)
    channel.basic_qos(prefetch_count=prefetch)
    count = 0
    start = time.perf_counter()
    end = start + seconds

    def on_message(ch: BlockingChannel, method: Any, _props: Any, _body: bytes) -> None:
        nonlocal count
        ch.basic_ack(method.delivery_tag)
        count += 1

    channel.basic_consume(QUEUE, on_message)
    while count < limit and time.perf_counter() < end:
        connection.process_data_events(time_limit=0.05)
    elapsed = time.perf_counter() - start
    connection.close()
    return {"messages": count, "prefetch": prefetch, "seconds": round(elapsed, 2), "rps": round(count / elapsed, 1)}
