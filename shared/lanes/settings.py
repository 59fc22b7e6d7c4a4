"""One frozen settings object, built once at the process edge and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import unquote, urlparse

from lanes.errors import ConfigError
from lanes.proxies import TrustedProxies, parse_networks

# The seed's .env ships this placeholder; running with it would make every
# token forgeable by anyone who has read the seed.
PLACEHOLDER_SECRETS = frozenset({"your_jwt_secret", "changeme", "secret"})
MIN_SECRET_LENGTH = 32
# A lane message's headers and properties besides its body (lanes.lane.messages), at most.
MESSAGE_HEADER_BYTES = 1024
QUEUE_TYPES = ("classic", "quorum")


@dataclass(frozen=True)
class Settings:
    """Every knob Lanes has. Field names map to upper-case environment variables."""

    mongo_uri: str = "mongodb://127.0.0.1:27017/lanes"
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    queue_prefix: str = "lanes"
    # "classic" on one broker node; "quorum" replicates the partitions across a
    # RabbitMQ cluster (docs/scaling.md weighs the cost).
    queue_type: str = "classic"
    data_dir: str = ".lanes"

    jwt_secret: str = ""
    jwt_private_key_file: str = ""
    jwt_public_key_file: str = ""
    jwt_key_id: str = "lanes-1"
    jwt_expires_seconds: int = 900
    # The token's `iss` and `aud`. An empty issuer is this deployment's own
    # (`lanes:<database>/<queue prefix>`), so a token of another deployment that shares the
    # key is still refused; tokens from before `aud` existed are honoured until they expire.
    jwt_issuer: str = ""
    jwt_audience: str = "lanes-api"

    max_body_bytes: int = 65536
    sleep_max_ms: int = 10000
    max_attempts: int = 3
    retry_backoff_seconds: float = 0.5
    lane_depth_limit: int = 1000
    request_timeout_seconds: float = 60.0
    # An attempt's deadline is REQUEST_TIMEOUT_SECONDS past its start plus this: room for the
    # holder to interrupt its handler, and for the clocks of two hosts to differ. A new
    # holder waits until then before it runs the attempt again (lanes.lane.fencing).
    fence_grace_seconds: float = 5.0
    retry_after_seconds: int = 5
    actions_module: str = ""
    # Off: any account could fill the dead letters and fire alerts. The local runner
    # (`make run`, the tests) turns it on to show retries and dead letters.
    enable_fail_action: bool = False

    worker_slots: int = 4
    # Lanes are hashed to this many queues (lanes.lane), each held by one worker
    # process at a time: the most worker processes that can share the work. Changing it
    # moves lanes between partitions, so it is set once per deployment (docs/scaling.md).
    lane_partitions: int = 16
    # What a worker holds in memory, whatever the backlog (lanes.lane.overflow): each
    # partition it holds delivers at most WORKER_HELD_REQUESTS / LANE_PARTITIONS messages
    # ahead of their acknowledgement, and a lane keeps at most LANE_WINDOW of them; the rest
    # of a deeper lane waits in its overflow queue. WORKER_HELD_BYTES is the bytes those
    # messages may take at the largest body, checked here.
    worker_held_requests: int = 1024
    lane_window: int = 8
    worker_held_bytes: int = 128 * 1024 * 1024
    sweep_interval_seconds: float = 30.0
    log_level: str = "INFO"
    # Login throttling (lanes.throttle). LOGIN_MAX_FAILURES failures of one username from
    # one client address within the window lock that pair (30 s, doubling up to
    # LOGIN_LOCK_MAX_SECONDS). Beyond LOGIN_USERNAME_MAX_FAILURES failures of a username from
    # anywhere, each attempt at it waits (0.25 s, doubling up to
    # LOGIN_USERNAME_DELAY_MAX_SECONDS) and is never refused, so no one can lock the owner
    # out. Each client address may try LOGIN_PER_ADDRESS_PER_MINUTE logins a minute, right
    # or wrong (in each login process; 0 = off), refused before any password is hashed.
    login_max_failures: int = 5
    login_window_seconds: int = 900
    login_lock_max_seconds: int = 900
    login_username_max_failures: int = 20
    login_username_delay_max_seconds: float = 2.0
    login_per_address_per_minute: int = 30
    # Proxies whose X-Forwarded-For entries are believed (lanes.proxies): by address range,
    # or, when TRUSTED_PROXY_HOPS is above 0, that many entries from the right behind a peer
    # in those ranges. Only the local router (loopback) by default; docs/security.md says
    # what to set on Knative and OpenFaaS.
    trusted_proxies: str = "127.0.0.1/32,::1/128"
    trusted_proxy_hops: int = 0
    # How often a process reads what was revoked since its last look (lanes.revocations;
    # 0 = on every call): the backstop behind the revocations pushed on the broker, which
    # take effect at once; it bounds how long a revocation whose push was lost works here.
    auth_cache_seconds: float = 5.0

    # Retention (lanes.retention): terminal requests and what hangs off them are purged
    # this many days after they finished; 0 keeps them forever.
    retention_days: float = 7.0
    # One user cannot slow the others: /enqueue calls per user per second (a token bucket
    # of ENQUEUE_BURST in each enqueue process; 0 = off), /register calls per client
    # address per minute (in each register process; 0 = off), and results larger than
    # this many bytes (as stored JSON) left out of listings.
    enqueue_rate_per_second: float = 50.0
    enqueue_burst: int = 200
    register_per_minute: int = 60
    # Calls of the status routes per user per second (a token bucket of STATUS_BURST in
    # each status process; 0 = off).
    status_rate_per_second: float = 20.0
    status_burst: int = 200
    listing_result_max_bytes: int = 4096

    # Test-only fault injection, inert unless set: the probability that the enqueue
    # function's process dies once its request is stored in the lane (the broker
    # confirmed it) and before its record is stored.
    fault_crash_after_store: float = 0.0

    # Metrics (lanes.exposition). PROMETHEUS_MULTIPROC_DIR is the multiprocess
    # directory of this function's processes; METRICS_ROOT, where functions share
    # a host, holds one such directory per function and lets /metrics show them all.
    prometheus_multiproc_dir: str = ""
    metrics_root: str = ""
    metrics_port: int = 0
    metrics_cache_seconds: float = 5.0
    rabbitmq_management_url: str = ""

    # argon2id cost: OWASP's recommended minimum (19 MiB, 2 passes, 1 lane).
    argon2_memory_kib: int = 19456
    argon2_rounds: int = 2

    @property
    def partition_prefetch(self) -> int:
        """Messages one partition delivers to its holder ahead of their acknowledgements."""
        return max(1, self.worker_held_requests // self.lane_partitions)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from a mapping of environment variables, rejecting bad values at once."""
        values: dict[str, object] = {}
        for field in fields(cls):
            raw = env.get(field.name.upper())
            if raw is None or raw == "":
                continue
            values[field.name] = _parse(field.name, str(field.type), raw)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ConfigError when a value cannot work."""
        positive = (
            "jwt_expires_seconds",
            "max_body_bytes",
            "max_attempts",
            "lane_depth_limit",
            "request_timeout_seconds",
            "fence_grace_seconds",
            "retry_after_seconds",
            "worker_slots",
            "lane_partitions",
            "sweep_interval_seconds",
            "login_max_failures",
            "login_window_seconds",
            "login_lock_max_seconds",
            "login_username_max_failures",
            "worker_held_requests",
            "lane_window",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.upper()} must be positive")
        if self.lane_window >= self.partition_prefetch:
            # A lane could fill its partition's window, and nothing behind it would be seen.
            raise ConfigError("LANE_WINDOW must be below WORKER_HELD_REQUESTS / LANE_PARTITIONS")
        if self.worker_held_requests * (self.max_body_bytes + MESSAGE_HEADER_BYTES) > self.worker_held_bytes:
            raise ConfigError(
                "WORKER_HELD_REQUESTS messages of MAX_BODY_BYTES exceed WORKER_HELD_BYTES: lower one or raise the other"
            )
        if not 0.0 <= self.fault_crash_after_store <= 1.0:
            raise ConfigError("FAULT_CRASH_AFTER_STORE must be a probability")
        if not 0 <= self.metrics_port <= 65535 or self.metrics_cache_seconds < 0:
            raise ConfigError("METRICS_PORT must be a port (0 = off) and METRICS_CACHE_SECONDS not negative")
        if self.sleep_max_ms < 0 or self.retry_backoff_seconds < 0:
            raise ConfigError("SLEEP_MAX_MS and RETRY_BACKOFF_SECONDS must not be negative")
        try:
            parse_networks(self.trusted_proxies)
        except ValueError:
            raise ConfigError("TRUSTED_PROXIES must be addresses or CIDR ranges, separated by commas") from None
        not_negative = (
            "retention_days",
            "enqueue_rate_per_second",
            "enqueue_burst",
            "register_per_minute",
            "listing_result_max_bytes",
            "trusted_proxy_hops",
            "login_username_delay_max_seconds",
            "login_per_address_per_minute",
            "status_rate_per_second",
            "status_burst",
        )
        for name in not_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.upper()} must not be negative")
        if 0 < self.retention_days < 1:
            raise ConfigError("RETENTION_DAYS must be 0 (keep) or at least 1: an Idempotency-Key holds 24 hours")
        if self.status_rate_per_second > 0 and self.status_burst < 1:
            raise ConfigError("STATUS_BURST must be at least 1 while STATUS_RATE_PER_SECOND is on")
        if not self.jwt_audience.strip():
            raise ConfigError("JWT_AUDIENCE must not be empty")
        if self.enqueue_rate_per_second > 0 and self.enqueue_burst < 1:
            raise ConfigError("ENQUEUE_BURST must be at least 1 while ENQUEUE_RATE_PER_SECOND is on")
        if not 0 <= self.auth_cache_seconds <= 60:
            raise ConfigError("AUTH_CACHE_SECONDS must be between 0 and 60")
        if self.jwt_secret:
            if self.jwt_secret.lower() in PLACEHOLDER_SECRETS:
                raise ConfigError("JWT_SECRET is a placeholder; generate a real secret")
            if len(self.jwt_secret) < MIN_SECRET_LENGTH:
                raise ConfigError(f"JWT_SECRET must be at least {MIN_SECRET_LENGTH} characters")
        mongo = urlparse(self.mongo_uri)
        if mongo.scheme not in ("mongodb", "mongodb+srv") or not mongo.netloc:
            raise ConfigError("MONGO_URI must be a mongodb:// URI")
        nodes = [urlparse(url) for url in self.rabbitmq_urls]
        if not nodes or any(node.scheme not in ("amqp", "amqps") or not node.netloc for node in nodes):
            raise ConfigError("RABBITMQ_URL must be an amqp:// URL, or several separated by commas")
        if len({node.path or "/" for node in nodes}) > 1:
            raise ConfigError("RABBITMQ_URL's nodes must all name the same vhost")
        if not self.queue_prefix.replace("-", "").replace("_", "").isalnum():
            raise ConfigError("QUEUE_PREFIX may hold only letters, digits, '-' and '_'")
        if self.queue_type not in QUEUE_TYPES:
            raise ConfigError(f"QUEUE_TYPE must be one of {', '.join(QUEUE_TYPES)}")

    @property
    def database_name(self) -> str:
        """The database named in MONGO_URI's path, `lanes` when it names none."""
        name = urlparse(self.mongo_uri).path.lstrip("/")
        return name or "lanes"

    @property
    def rabbitmq_urls(self) -> list[str]:
        """The nodes RABBITMQ_URL names: one URL, or several separated by commas (a cluster,
        tried in turn when one does not answer)."""
        return [url.strip() for url in self.rabbitmq_url.split(",") if url.strip()]

    @property
    def management_url(self) -> str:
        """RabbitMQ's management API: RABBITMQ_MANAGEMENT_URL, else port 15672 of the AMQP host
        with the AMQP credentials."""
        if self.rabbitmq_management_url:
            return self.rabbitmq_management_url.rstrip("/")
        amqp = urlparse(self.rabbitmq_urls[0])
        credentials = f"{amqp.username or 'guest'}:{amqp.password or 'guest'}@"
        host = amqp.hostname or "127.0.0.1"
        return f"http://{credentials}{f'[{host}]' if ':' in host else host}:15672"

    @property
    def rabbitmq_vhost(self) -> str:
        """The vhost named in RABBITMQ_URL's path, `/` when it names none (as pika reads it)."""
        path = urlparse(self.rabbitmq_urls[0]).path
        return unquote(path[1:]) if len(path) > 1 else "/"

    @property
    def proxies(self) -> TrustedProxies:
        return TrustedProxies(parse_networks(self.trusted_proxies), self.trusted_proxy_hops)

    @property
    def token_issuer(self) -> str:
        """JWT_ISSUER, else this deployment's own: every function of one deployment shares
        its database and queue prefix, and another deployment differs in one of them."""
        return self.jwt_issuer or f"lanes:{self.database_name}/{self.queue_prefix}"

    @property
    def keys_dir(self) -> Path:
        return Path(self.data_dir) / "keys"


def _parse(name: str, type_name: str, raw: str) -> object:
    try:
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
        if type_name == "bool":
            return _parse_bool(raw)
    except ValueError:
        raise ConfigError(f"{name.upper()} must be a {type_name}, got {raw!r}") from None
    return raw


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def load_settings(env_file: str | os.PathLike[str] = ".env") -> Settings:
    """Settings from the process environment, falling back to a `.env` file and to
    the files of SECRETS_DIR.

    Only entry points call this; everything below them receives the Settings.
    """
    from dotenv import dotenv_values

    merged: dict[str, str] = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    merged.update(os.environ)
    if merged.get("SECRETS_DIR"):
        merged = {**secret_files(Path(merged["SECRETS_DIR"])), **merged}
    return Settings.from_env(merged)


def secret_files(directory: Path) -> dict[str, str]:
    """Settings kept as one file per value, as OpenFaaS mounts its secrets.

    A file named like a setting in lower case with dashes (`mongo-uri`) gives that
    setting (`MONGO_URI`); other files (key PEMs) are left to the settings that
    name their paths. The environment still wins over a file.
    """
    known = {field.name.upper() for field in fields(Settings)}
    values = {}
    for path in sorted(directory.glob("*")) if directory.is_dir() else ():
        name = path.name.upper().replace("-", "_")
        if name in known and path.is_file():
            values[name] = path.read_text().strip()
    return values
