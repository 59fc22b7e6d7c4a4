"""Operators' commands: look at dead letters, put one back into its lane, remove a user.

python -m lanes.admin dead-letters [--limit N]
python -m lanes.admin requeue REQUEST_ID
python -m lanes.admin delete-user USERNAME
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lanes import revocation_push
from lanes.broker import ChannelPool
from lanes.db import connect, iso
from lanes.errors import LanesError
from lanes.lane.admission import LaneLedger, PartitionPublisher
from lanes.queueing import Enqueuer
from lanes.requests import Requests, request_data
from lanes.revocations import Revocations
from lanes.settings import Settings, load_settings
from lanes.users import Users
from lanes.validation import EnqueueBody


def list_dead_letters(settings: Settings, limit: int) -> list[dict[str, Any]]:
    letters = Requests(connect(settings)).dead_letters(limit)
    return [{**letter, "failed_at": iso(letter.get("failed_at"))} for letter in letters]


def requeue(settings: Settings, request_id: str) -> dict[str, Any]:
    """Enqueue a dead letter's action and data again, as a new request at the tail of its lane."""
    requests = Requests(connect(settings))
    letter = requests.dead_letter(request_id)
    if letter is None:
        raise LanesError(f"no dead letter {request_id}", code="not_found")
    # This process has seen none of the lane's requests: the depth limit and `position`
    # count from zero here (an operator's requeue is not a client's flood).
    ledger = LaneLedger(settings.lane_depth_limit, verify=lambda _request_id: False)
    publisher = PartitionPublisher(settings, ChannelPool(settings, max_idle=1), ledger)
    enqueuer = Enqueuer(settings, requests, publisher)
    body = EnqueueBody(action=letter["action"], data=request_data(letter))
    accepted = enqueuer.enqueue(letter["user_id"], body, None)
    requests.mark_requeued(request_id, accepted.record["_id"])
    return {"dead_letter": request_id, "requeued_as": accepted.record["_id"], "position": accepted.position}


def delete_user(settings: Settings, username: str) -> dict[str, Any]:
    """Revoke a user's tokens, then remove the user: refused everywhere as soon as the
    revocation is pushed (lanes.revocations), and never a moment when the user is gone but
    the tokens still work."""
    db = connect(settings)
    users = Users(db)
    user_id = users.id_of(username)
    if user_id is None:
        raise LanesError(f"no user {username}", code="not_found")
    Revocations.from_settings(db, settings, publish=revocation_push.publisher(settings)).revoke_user(user_id)
    users.delete(username)
    return {"deleted": username}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lanes.admin", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("dead-letters", help="list dead letters, newest first")
    listing.add_argument("--limit", type=int, default=50)
    again = commands.add_parser("requeue", help="run a dead letter's request again, as a new request")
    again.add_argument("request_id")
    removal = commands.add_parser("delete-user", help="remove a user; their tokens stop working")
    removal.add_argument("username")
    args = parser.parse_args(argv)
    settings = load_settings()
    try:
        if args.command == "dead-letters":
            output: Any = list_dead_letters(settings, args.limit)
        elif args.command == "delete-user":
            output = delete_user(settings, args.username)
        else:
            output = requeue(settings, args.request_id)
    except LanesError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    print(json.dumps(output, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
