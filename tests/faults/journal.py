"""The handler journal: what handlers did, as the `journaled` action (slow_actions.py) wrote
it down, and the verdict on it. This, not the request records, is the ground truth of the
fencing scenarios: records can look right while a lane ran twice at once.

A run is one attempt in one process: its begin, and its end, or "fenced" (it reached its
end after its deadline, so its end was refused), or nothing (its process died, or its
time limit interrupted it). A run is taken to have acted until its end; until its
deadline when it was fenced or never ended.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Run:
    request: str
    lane: str
    pid: int
    epoch: int
    attempt: int
    began: float
    deadline: float
    ended: float | None  # None: fenced, or never ended
    fenced_at: float | None

    @property
    def acted_until(self) -> float:
        return self.ended if self.ended is not None else self.deadline


@dataclass(frozen=True)
class Verdict:
    runs: int
    overlaps: int  # two runs of one lane acting at once
    out_of_order: int  # a lane's request began before the one accepted before it had ended
    runs_after_finish: int  # a request run again after a run of it had ended
    never_finished: int  # accepted requests no run of which reached its end
    early_fences: int  # "fenced" written before the deadline: the journal itself is wrong

    def clean(self) -> bool:
        return not (self.overlaps or self.out_of_order or self.runs_after_finish or self.never_finished) and (
            not self.early_fences
        )


def read_runs(path: Path) -> list[Run]:
    entries: dict[tuple[str, int, int, int], dict[str, dict[str, float | str | int]]] = defaultdict(dict)
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        key = (entry["request"], entry["pid"], entry["epoch"], entry["attempt"])
        entries[key][entry["event"]] = entry
    runs = []
    for (request, pid, epoch, attempt), events in entries.items():
        begin = events["begin"]
        end, fenced = events.get("end"), events.get("fenced")
        runs.append(
            Run(
                request=request,
                lane=str(begin["lane"]),
                pid=pid,
                epoch=epoch,
                attempt=attempt,
                began=float(begin["t"]),
                deadline=float(begin["deadline"]),
                ended=None if end is None else float(end["t"]),
                fenced_at=None if fenced is None else float(fenced["t"]),
            )
        )
    return runs


def judge(runs: list[Run], lanes: list[list[str]]) -> Verdict:
    """`lanes`: each lane's accepted request ids, in the order they were accepted."""
    by_request: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_request[run.request].append(run)
    overlaps = out_of_order = runs_after_finish = never_finished = 0
    for accepted in lanes:
        lane_runs = sorted((run for request in accepted for run in by_request[request]), key=lambda r: r.began)
        acting_until = float("-inf")
        for run in lane_runs:
            overlaps += run.began < acting_until
            acting_until = max(acting_until, run.acted_until)
        for earlier, later in itertools.pairwise(accepted):
            if by_request[earlier] and by_request[later]:
                last_end = max(run.acted_until for run in by_request[earlier])
                out_of_order += min(run.began for run in by_request[later]) < last_end
        for request in accepted:
            ordered = sorted(by_request[request], key=lambda r: r.began)
            finished = [run.ended for run in ordered if run.ended is not None]
            never_finished += not finished
            runs_after_finish += sum(1 for run in ordered if finished and run.began > min(finished))
    early = sum(1 for run in runs if run.fenced_at is not None and run.fenced_at < run.deadline)
    return Verdict(len(runs), overlaps, out_of_order, runs_after_finish, never_finished, early)
