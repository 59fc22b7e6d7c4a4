"""Settings for running beyond one machine: quorum queues, replica-set URIs, secret files."""

from pathlib import Path

import pymongo.uri_parser
import pytest

from lanes.broker import QUORUM_DELIVERY_LIMIT, QueueNames, connection_parameters, partition_arguments
from lanes.errors import ConfigError
from lanes.settings import Settings, load_settings


def test_partitions_are_classic_queues_by_default_and_never_expire() -> None:
    arguments = partition_arguments(Settings.from_env({}))
    assert arguments == {"x-queue-type": "classic"}


def test_quorum_partitions_carry_a_delivery_limit_so_returned_messages_come_back_first() -> None:
    settings = Settings.from_env({"QUEUE_TYPE": "quorum"})
    arguments = partition_arguments(settings)
    assert arguments["x-queue-type"] == "quorum"
    assert arguments["x-delivery-limit"] == QUORUM_DELIVERY_LIMIT
    assert arguments["x-single-active-consumer"] is True
    assert "x-expires" not in arguments and "x-max-length" not in arguments
    assert QueueNames.of(settings) == QueueNames("lanes", "quorum")


def test_rabbitmq_url_names_every_node_of_a_cluster_and_connections_fail_over_between_them() -> None:
    settings = Settings.from_env({"RABBITMQ_URL": "amqp://u:p@node-a:5672/lanes, amqp://u:p@node-b:5673/lanes"})
    assert settings.rabbitmq_urls == ["amqp://u:p@node-a:5672/lanes", "amqp://u:p@node-b:5673/lanes"]
    assert settings.rabbitmq_vhost == "lanes"
    orders = {tuple(p.host for p in connection_parameters(settings)) for _ in range(50)}
    assert orders == {("node-a", "node-b"), ("node-b", "node-a")}  # every node, from a random one
    assert Settings.from_env({"RABBITMQ_URL": "amqp://a, ,"}).rabbitmq_urls == ["amqp://a"]


@pytest.mark.parametrize("url", ["amqp://u:p@a:5672/lanes,amqp://u:p@b:5672/other", "amqp://u:p@a:5672/lanes,http://b"])
def test_cluster_urls_that_cannot_work_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="RABBITMQ_URL"):
        Settings.from_env({"RABBITMQ_URL": url})


def test_an_unknown_queue_type_is_refused() -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({"QUEUE_TYPE": "stream"})


@pytest.mark.parametrize(
    "uri",
    [
        "mongodb://db-0.db:27017,db-1.db:27017,db-2.db:27017/lanes?replicaSet=rs0&w=majority",
        "mongodb://lanes:s%40cret@db-0.db,db-1.db/lanes?replicaSet=rs0&authSource=admin&readPreference=primary",
        "mongodb+srv://lanes:secret@cluster0.example.net/lanes?retryWrites=true&w=majority",
    ],
)
def test_replica_set_uris_work_unchanged(uri: str) -> None:
    settings = Settings.from_env({"MONGO_URI": uri})
    assert settings.mongo_uri == uri  # passed to pymongo as given: no rewriting of hosts or options
    assert settings.database_name == "lanes"
    if not uri.startswith("mongodb+srv"):  # an SRV URI needs DNS to parse
        parsed = pymongo.uri_parser.parse_uri(uri)
        assert parsed["database"] == "lanes" and len(parsed["nodelist"]) >= 2


def test_settings_come_from_secret_files_but_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given secrets mounted one value per file, as OpenFaaS does
    (tmp_path / "mongo-uri").write_text("mongodb://db-0,db-1/lanes?replicaSet=rs0\n")
    (tmp_path / "rabbitmq-url").write_text("amqp://lanes:pw@broker:5672/%2F")
    (tmp_path / "jwt-public.pem").write_text("-----BEGIN PUBLIC KEY-----")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("RABBITMQ_URL", "amqp://from-env:5672/%2F")
    monkeypatch.delenv("MONGO_URI", raising=False)

    settings = load_settings()

    assert settings.mongo_uri == "mongodb://db-0,db-1/lanes?replicaSet=rs0"
    assert settings.rabbitmq_url == "amqp://from-env:5672/%2F"
