"""The `lanes` command: your lane from a terminal or a script.

Exit codes (also in docs/client.md): 0 success; 1 a request failed or an unexpected
error; 2 bad usage; 3 a request was cancelled; 4 not logged in, bad credentials or an
expired token; 5 not found; 6 conflict; 7 still throttled (429) after the retries;
8 Lanes unavailable or unreachable; 9 a wait timed out; 10 refused as invalid (400, 413, 415).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar
from urllib.parse import urlparse

import click
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from lanes_client import config
from lanes_client.client import STATUSES, TERMINAL, Client, Request
from lanes_client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    LanesError,
    NotFound,
    PayloadTooLarge,
    RequestCancelled,
    RequestFailed,
    ServerError,
    ServiceUnavailable,
    TokenExpired,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
    WaitTimeout,
)

DEFAULT_URL = "http://127.0.0.1:8080"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 3
EXIT_AUTH = 4
EXIT_NOT_FOUND = 5
EXIT_CONFLICT = 6
EXIT_THROTTLED = 7
EXIT_UNAVAILABLE = 8
EXIT_TIMEOUT = 9
EXIT_INVALID = 10

EXIT_CODES: list[tuple[type[LanesError], int]] = [
    (RequestFailed, EXIT_FAILED),
    (RequestCancelled, EXIT_CANCELLED),
    (WaitTimeout, EXIT_TIMEOUT),
    (Unauthorized, EXIT_AUTH),
    (NotFound, EXIT_NOT_FOUND),
    (Conflict, EXIT_CONFLICT),
    (TooManyRequests, EXIT_THROTTLED),
    (ServiceUnavailable, EXIT_UNAVAILABLE),
    (ServerError, EXIT_UNAVAILABLE),
    (ConnectionFailed, EXIT_UNAVAILABLE),
    (BadRequest, EXIT_INVALID),
    (PayloadTooLarge, EXIT_INVALID),
    (UnsupportedMediaType, EXIT_INVALID),
]

F = TypeVar("F", bound=Callable[..., Any])


class NotLoggedIn(Unauthorized):
    pass


@dataclass
class Env:
    url: str
    as_json: bool
    out: Console
    err: Console

    def client(self, *, logged_in: bool = True) -> Client:
        if not logged_in:
            return Client(self.url)
        saved = config.saved_token(self.url)
        if saved is None:
            raise NotLoggedIn(f"not logged in to {self.url}: run `lanes login`", code="not_logged_in")
        return Client(self.url, token=saved["access_token"])

    def emit(self, value: Any) -> None:
        """One JSON document per line on stdout."""
        click.echo(json.dumps(value, ensure_ascii=False, sort_keys=True))


def exit_code(error: LanesError) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return EXIT_FAILED


def handled(command: F) -> F:
    """Turn the client's errors into a message on stderr and the exit code that names them."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        env: Env = click.get_current_context().find_object(Env)  # type: ignore[assignment]
        try:
            return command(*args, **kwargs)
        except LanesError as error:
            report_error(env, error)
            raise SystemExit(exit_code(error)) from None

    return wrapper  # type: ignore[return-value]


def report_error(env: Env, error: LanesError) -> None:
    message = str(error)
    if isinstance(error, TokenExpired):
        message = f"your token has expired: run `lanes login` again ({error.message})"
    if env.as_json:
        body: dict[str, Any] = {"error": getattr(error, "code", "") or type(error).__name__, "message": message}
        if isinstance(error, ApiError):
            body["status"] = error.status
            if error.retry_after is not None:
                body["retry_after"] = error.retry_after
        if isinstance(error, (RequestFailed, RequestCancelled)):
            body["request"] = error.record
        click.echo(json.dumps(body, sort_keys=True), err=True)
    else:
        env.err.print(f"[red]error:[/red] {escape(message)}", highlight=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="LANES_URL", default=DEFAULT_URL, show_default=True, help="Base URL (or LANES_URL).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output: one JSON document per line.")
@click.version_option(package_name="lanes-client")
@click.pass_context
def main(ctx: click.Context, url: str, as_json: bool) -> None:
    """Lanes: your own FIFO lane of requests."""
    out = Console()
    if not out.is_terminal:  # piped: whole lines, never ids cut to a guessed width
        out = Console(width=200)
    ctx.obj = Env(url.rstrip("/"), as_json, out, Console(stderr=True, soft_wrap=True))


def warn_if_cleartext(env: Env) -> None:
    """Say so before a password goes to another machine over plain http://."""
    url = urlparse(env.url)
    if url.scheme == "http" and not _loopback(url.hostname or ""):
        env.err.print(
            f"warning: {env.url} is plain http://; your password crosses the network unencrypted (use https://)",
            highlight=False,
            markup=False,
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _password(password_stdin: bool, confirm: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=confirm))


@main.command()
@click.option("--username", "-u", prompt=True, help="3-64 letters, digits, _ . -")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.pass_obj
@handled
def register(env: Env, username: str, password_stdin: bool) -> None:
    """Create a user."""
    warn_if_cleartext(env)
    with env.client(logged_in=False) as client:
        user = client.register(username, _password(password_stdin, confirm=True))
    if env.as_json:
        env.emit(user)
    else:
        env.out.print(f"registered {user['username']} at {env.url}", highlight=False, markup=False)


@main.command()
@click.option("--username", "-u", prompt=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.pass_obj
@handled
def login(env: Env, username: str, password_stdin: bool) -> None:
    """Log in and keep the token (never the password) in the config folder."""
    warn_if_cleartext(env)
    with env.client(logged_in=False) as client:
        token = client.login(username, _password(password_stdin, confirm=False))
    expires_in = float(token.get("expires_in") or 0)
    config.save_token(env.url, username, token["access_token"], expires_in)
    if env.as_json:
        env.emit({"username": username, "url": env.url, "expires_in": expires_in})
    else:
        env.out.print(
            f"logged in as {username} at {env.url} for {expires_in / 60:g} min", highlight=False, markup=False
        )


@main.command()
@click.pass_obj
@handled
def logout(env: Env) -> None:
    """Revoke the token and forget it."""
    try:
        with env.client() as client:
            client.logout()
    except Unauthorized:
        pass  # expired or revoked already: forgetting it is all that is left
    config.forget_token(env.url)
    if env.as_json:
        env.emit({"url": env.url, "logged_out": True})
    else:
        env.out.print(f"logged out of {env.url}", highlight=False, markup=False)


def _json_argument(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise click.BadParameter(f"not JSON ({error})", param_hint=where) from None


def _payloads(data: tuple[str, ...], source: TextIO | None) -> list[Any]:
    payloads = [_json_argument(text, "--data") for text in data]
    if source is not None:
        for number, line in enumerate(source, 1):
            if line.strip():
                payloads.append(_json_argument(line, f"--from line {number}"))
    return payloads or [None]


@main.command()
@click.argument("action")
@click.option("--data", "-d", multiple=True, help="JSON data; repeat for several requests, sent in order.")
@click.option("--from", "source", type=click.File("r"), help="JSON lines, one request each ('-': stdin).")
@click.option("--key", help="Idempotency-Key (one request only); by default one is made per request.")
@click.option("--wait", "-w", is_flag=True, help="Wait for the outcomes, in order, and print them.")
@click.option("--timeout", type=float, default=None, help="Seconds to wait for each request (default: no limit).")
@click.pass_obj
@handled
def submit(
    env: Env,
    action: str,
    data: tuple[str, ...],
    source: TextIO | None,
    key: str | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Put requests for ACTION at the tail of your lane (echo, sleep, fail, or your own)."""
    payloads = _payloads(data, source)
    if key and len(payloads) > 1:
        raise click.UsageError("--key names one request; leave it out for several")
    with env.client() as client:
        requests = [client.submit(action, payload, idempotency_key=key) for payload in payloads]
        if not wait:
            for request in requests:
                _print_accepted(env, request)
            return
        worst = _wait_all(env, requests, timeout)
    if worst is not None:
        if env.as_json:  # plain output has named each outcome already
            report_error(env, worst)
        raise SystemExit(exit_code(worst))


def _print_accepted(env: Env, request: Request) -> None:
    if env.as_json:
        env.emit({"request_id": request.id, "status": request.status, "position": request.position})
    else:
        env.out.print(f"{request.id} {request.status} position {request.position}", highlight=False, markup=False)


def _wait_all(env: Env, requests: list[Request], timeout: float | None) -> LanesError | None:
    """Wait for each request in lane order, printing each outcome; the worst outcome's error, if any."""
    worst: LanesError | None = None
    with _progress(env, len(requests)) as advance:
        for request in requests:
            try:
                request.wait(timeout)
            except (RequestFailed, RequestCancelled, WaitTimeout) as error:
                worst = _worse(worst, error)
            _print_outcome(env, request)
            advance()
    return worst


def _worse(current: LanesError | None, new: LanesError) -> LanesError:
    rank = {RequestFailed: 3, WaitTimeout: 2, RequestCancelled: 1}
    if current is None or rank.get(type(new), 0) > rank.get(type(current), 0):
        return new
    return current


def _print_outcome(env: Env, request: Request) -> None:
    if env.as_json:
        env.emit(request.record)
    elif request.status == "done":
        click.echo(json.dumps(request.result, ensure_ascii=False))
    else:
        detail = f": {request.error}" if request.error else ""
        env.err.print(f"{request.id} {request.status}{detail}", highlight=False, markup=False)


class _progress:
    """A progress bar on stderr while several requests drain, when stderr is a terminal."""

    def __init__(self, env: Env, total: int) -> None:
        shown = total > 1 and env.err.is_terminal
        self.bar = Progress(
            TextColumn("waiting"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=env.err,
            disable=not shown,
            transient=True,
        )
        self.task = self.bar.add_task("waiting", total=total)

    def __enter__(self) -> Callable[[], None]:
        self.bar.start()
        return lambda: self.bar.advance(self.task)

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


@main.command()
@click.argument("request_id")
@click.pass_obj
@handled
def status(env: Env, request_id: str) -> None:
    """Show one of your requests."""
    with env.client() as client:
        record = client.get_record(request_id)
    if env.as_json:
        env.emit(record)
        return
    table = Table.grid(padding=(0, 2))
    for field in ("request_id", "action", "status", "attempts", "created_at", "started_at", "finished_at", "error"):
        table.add_row(field, _plain(record.get(field) if record.get(field) is not None else "-"))
    table.add_row("result", _plain(json.dumps(record.get("result"), ensure_ascii=False)))
    env.out.print(table)


@main.command(name="ls")
@click.option("--status", "status_", type=click.Choice(STATUSES), help="Only requests in this status.")
@click.option("--limit", type=int, default=50, show_default=True, help="At most this many (0: all).")
@click.pass_obj
@handled
def list_requests(env: Env, status_: str | None, limit: int) -> None:
    """List your requests, oldest first."""
    with env.client() as client:
        records = [request.record for request in _take(client.iter_requests(status_), limit)]
    if env.as_json:
        for record in records:
            env.emit(record)
        return
    table = Table(box=None)
    table.add_column("request_id", no_wrap=True, min_width=32)
    for column in ("action", "status", "attempts", "created_at", "finished_at"):
        table.add_column(column, no_wrap=True)
    for record in records:
        table.add_row(
            _plain(record["request_id"]),
            _plain(record["action"]),
            _styled(record["status"]),
            _plain(record["attempts"]),
            _plain(record["created_at"]),
            _plain(record.get("finished_at") or "-"),
        )
    env.out.print(table)


def _take(requests: Iterator[Request], limit: int) -> Iterator[Request]:
    for count, request in enumerate(requests):
        if limit and count >= limit:
            return
        yield request


STYLES = {"queued": "cyan", "processing": "yellow", "done": "green", "failed": "red", "cancelled": "dim"}


def _styled(status: str) -> Text:
    return Text(str(status), style=STYLES.get(status, "white"))


def _plain(value: object) -> Text:
    """Text as it came (from the server, a handler's error, the user): never read as markup."""
    return Text(str(value))


@main.command()
@click.argument("request_id")
@click.pass_obj
@handled
def cancel(env: Env, request_id: str) -> None:
    """Cancel a request that has not started."""
    with env.client() as client:
        record = client.cancel(request_id).record
    if env.as_json:
        env.emit(record)
    else:
        env.out.print(f"{record['request_id']} {record['status']}", highlight=False, markup=False)


class LaneView:
    """What `lanes watch` shows: the open requests, and what became of those it saw open."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.counted: set[str] = set()
        self.open: list[dict[str, Any]] = []
        self.outcomes = dict.fromkeys(TERMINAL, 0)

    def update(self, client: Client) -> None:
        # Queued before processing: a request that moves on between the two listings is
        # seen twice or seen finished, never lost.
        current: dict[str, dict[str, Any]] = {}
        for status in ("queued", "processing"):
            current.update({request.id: request.record for request in client.iter_requests(status)})
        for request_id in sorted(self.seen - set(current) - self.counted):
            outcome = client.get_record(request_id)["status"]
            if outcome in TERMINAL:
                self.outcomes[outcome] += 1
                self.counted.add(request_id)
        self.open = sorted(current.values(), key=lambda record: str(record["created_at"]))
        self.seen |= set(current)

    @property
    def finished(self) -> int:
        return len(self.counted)

    def summary(self) -> dict[str, Any]:
        return {
            "queued": sum(record["status"] == "queued" for record in self.open),
            "processing": [record["request_id"] for record in self.open if record["status"] == "processing"],
            "seen": len(self.seen),
            **self.outcomes,
        }

    def render(self, bar: Progress, task: Any) -> Group:
        bar.update(task, total=max(1, len(self.seen)), completed=self.finished)
        table = Table.grid(padding=(0, 2))
        for record in self.open[:10]:
            fields = (record["request_id"], record["action"], record["created_at"])
            table.add_row(_styled(record["status"]), *(_plain(field) for field in fields))
        if len(self.open) > 10:
            table.add_row("", f"... and {len(self.open) - 10} more", "", "")
        counts = Text("  ").join(Text.assemble(_styled(status), f" {count}") for status, count in self.outcomes.items())
        return Group(bar, table, counts)


@main.command()
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between looks.")
@click.option("--until-empty", is_flag=True, help="Stop once nothing is queued or running.")
@click.pass_obj
@handled
def watch(env: Env, interval: float, until_empty: bool) -> None:
    """A live view of your lane: what runs, what waits, what finished while watching."""
    view = LaneView()
    bar = Progress(TextColumn("lane"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=env.out)
    task = bar.add_task("lane", total=1)
    live = None if env.as_json else Live(console=env.out, refresh_per_second=4, transient=False)
    last: dict[str, Any] | None = None
    try:
        with env.client() as client:
            if live:
                live.start()
            while True:
                view.update(client)
                if live:
                    live.update(view.render(bar, task))
                elif view.summary() != last:
                    last = view.summary()
                    env.emit(last)
                if until_empty and not view.open:
                    return
                time.sleep(interval)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    finally:
        if live:
            live.stop()
            if not env.out.is_terminal:
                env.out.line()  # the last frame, written once, ends its line


# -- operators -------------------------------------------------------------
# The HTTP API has no dead-letter routes: dead letters are read and requeued by
# `python -m lanes.admin` against the database and the broker. Where the server
# package is installed beside this one (the project's .venv, an operator's box),
# these commands run it with the current environment (MONGO_URI, RABBITMQ_URL, .env).
# Isolated (`python -I`): no module is ever imported from the current folder or from
# PYTHONPATH, so running it inside a folder someone else filled runs none of their code.


def _admin(env: Env, *args: str) -> Any:
    done = subprocess.run([sys.executable, "-I", "-m", "lanes.admin", *args], capture_output=True, text=True)
    if "No module named lanes.admin" in done.stderr or "No module named 'lanes'" in done.stderr:
        env.err.print("error: operators' commands need the Lanes server package (python -m lanes.admin)")
        raise SystemExit(EXIT_FAILED)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(EXIT_NOT_FOUND if "no dead letter" in done.stderr else EXIT_FAILED)
    return json.loads(done.stdout)


@main.command(name="dead-letters")
@click.option("--limit", type=int, default=50, show_default=True)
@click.pass_obj
def dead_letters(env: Env, limit: int) -> None:
    """Operators: requests that failed every attempt, newest first (needs the server package)."""
    letters = _admin(env, "dead-letters", "--limit", str(limit))
    if env.as_json:
        for letter in letters:
            env.emit(letter)
        return
    table = Table(box=None)
    for column in ("request_id", "user_id", "action", "attempts", "failed_at", "error"):
        table.add_column(column, no_wrap=column != "error")
    for letter in letters:
        fields = (letter.get("_id"), letter.get("user_id"), letter.get("action"), letter.get("attempts"))
        table.add_row(
            *(_plain(field) for field in fields), _plain(letter.get("failed_at")), _plain(letter.get("error") or "")
        )
    env.out.print(table)


@main.command()
@click.argument("request_id")
@click.pass_obj
def requeue(env: Env, request_id: str) -> None:
    """Operators: run a dead letter again, as a new request at the tail of its lane."""
    again = _admin(env, "requeue", request_id)
    if env.as_json:
        env.emit(again)
    else:
        env.out.print(
            f"{request_id} requeued as {again['requeued_as']} position {again['position']}",
            highlight=False,
            markup=False,
        )
