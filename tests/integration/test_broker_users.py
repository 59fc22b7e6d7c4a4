"""Each function reaches the embedded broker as a user of its own, with only the rights it needs:
the status function's user can neither publish a request or a settled notice nor take work,
and the enqueue function's cannot take work. Only login publishes revocations; every
function that checks tokens follows them through a server-named queue."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pika
import pika.exceptions
import pytest

from deploy import services
from deploy.runner import broker_urls
from tests.support import management_api, open_vhost

PREFIX = "lanes"
PARTITION = f"{PREFIX}.partition.0"
SETTLED = f"{PREFIX}.settled"
LEDGERS = f"{PREFIX}.ledgers"  # settled notices routed to the ledger that counts them
OVERFLOW = f"{PREFIX}.overflow"  # where a worker spills a deep lane's requests
REVOCATIONS = f"{PREFIX}.revocations"  # lanes.revocations: a transient fanout


@pytest.fixture(scope="module")
def urls(running_services: None) -> Iterator[dict[str, str]]:
    # Given a vhost of its own with a partition and the settled exchange, as the functions make them
    vhost = f"lanes-test-users-{uuid.uuid4().hex[:8]}"
    admin_url = open_vhost(vhost)
    with pika.BlockingConnection(pika.URLParameters(admin_url)) as connection:
        channel = connection.channel()
        channel.queue_declare(PARTITION, durable=True, arguments={"x-queue-type": "classic"})
        channel.exchange_declare(SETTLED, "fanout", durable=True)
        channel.exchange_declare(LEDGERS, "direct", durable=True)
        channel.exchange_declare(OVERFLOW, "direct", durable=True)
        channel.exchange_declare(REVOCATIONS, "fanout", durable=False)
    yield broker_urls({"RABBITMQ_URL": admin_url, "QUEUE_PREFIX": PREFIX})
    management_api("DELETE", f"/api/vhosts/{vhost}")


def _refused(url: str, operation: str) -> bool:
    """Whether the broker refuses `operation` to the user of `url` (403 ACCESS_REFUSED)."""
    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        try:
            if operation == "publish to a partition":
                channel.basic_publish("", PARTITION, b"{}", mandatory=True)
            elif operation == "publish a settled notice":
                channel.basic_publish(SETTLED, "", b"{}")
            elif operation == "notify a ledger":
                channel.basic_publish(LEDGERS, "some-ledger", b"[]")
            elif operation == "follow its ledger's notices":
                channel.exchange_declare(LEDGERS, "direct", durable=True)
                own = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
                channel.queue_bind(own, LEDGERS, "some-ledger")
                channel.basic_consume(own, lambda *_: None)
            elif operation == "spill a deep lane":
                channel.basic_publish(OVERFLOW, "some-user", b"{}")
            elif operation == "publish a revocation":
                channel.basic_publish(REVOCATIONS, "", b"{}")
            elif operation == "follow the revocations":
                channel.exchange_declare(REVOCATIONS, "fanout", durable=False)
                own = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
                channel.queue_bind(own, REVOCATIONS)
                channel.basic_consume(own, lambda *_: None)
            elif operation == "consume a partition":
                channel.basic_consume(PARTITION, lambda *_: None)
                channel.cancel()
            else:
                raise AssertionError(operation)
        except pika.exceptions.ChannelClosedByBroker as error:
            assert error.reply_code == 403, error
            return True
    return False


def test_every_function_has_a_user_of_its_own(urls: dict[str, str]) -> None:
    admin = services.local_broker().credentials
    users = {name: pika.URLParameters(url).credentials.username for name, url in urls.items()}  # type: ignore[attr-defined]
    assert users == {name: f"{admin.user}-{name}" for name in ("login", "enqueue", "worker", "status")}
    assert len({url for url in urls.values()}) == 4


@pytest.mark.parametrize(
    ("function", "operation", "refused"),
    [
        ("status", "publish to a partition", True),
        ("status", "publish a settled notice", True),
        ("status", "consume a partition", True),
        ("enqueue", "consume a partition", True),
        ("enqueue", "publish a settled notice", True),
        ("enqueue", "notify a ledger", True),
        ("enqueue", "follow its ledger's notices", False),
        ("worker", "notify a ledger", False),
        ("status", "notify a ledger", True),
        ("status", "follow its ledger's notices", True),
        ("login", "follow its ledger's notices", True),
        ("enqueue", "publish to a partition", False),
        ("worker", "publish to a partition", True),
        ("worker", "consume a partition", False),
        ("worker", "publish a settled notice", False),
        ("worker", "spill a deep lane", False),
        ("enqueue", "spill a deep lane", True),
        ("status", "spill a deep lane", True),
        ("login", "publish a revocation", False),
        ("login", "follow the revocations", False),
        ("login", "publish to a partition", True),
        ("login", "publish a settled notice", True),
        ("login", "consume a partition", True),
        ("enqueue", "follow the revocations", False),
        ("status", "follow the revocations", False),
        ("enqueue", "publish a revocation", True),
        ("status", "publish a revocation", True),
        ("worker", "publish a revocation", True),
        ("worker", "follow the revocations", True),
    ],
)
def test_each_function_may_do_only_its_part(urls: dict[str, str], function: str, operation: str, refused: bool) -> None:
    assert _refused(urls[function], operation) is refused


def test_the_status_user_may_only_watch_the_management_api(urls: dict[str, str]) -> None:
    tags = {name: services.FUNCTION_TAGS[name] for name in urls}
    assert tags == {"login": "", "enqueue": "", "worker": "", "status": "monitoring"}


def test_a_password_that_begins_with_a_dash_is_set_through_stdin() -> None:
    # rabbitmqctl reads it from stdin: in argv it would be visible to every local user, and
    # `-…` would be taken for an option
    broker = services.local_broker()
    who = services.Credentials(f"lanes-test-dash-{uuid.uuid4().hex[:6]}", "-" + uuid.uuid4().hex)
    broker._ctl("add_user", who.user, stdin=who.password)
    broker._ctl("set_user_tags", who.user, "monitoring")  # so that it may ask the API who it is
    try:
        assert services._management(broker.management_port, who, "GET", "/api/whoami")["name"] == who.user
    finally:
        broker._ctl("delete_user", who.user)
