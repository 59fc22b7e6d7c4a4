"""The lane protocol: every lane is hashed to one of LANE_PARTITIONS durable queues, a
partition is consumed by one worker process at a time, and that process runs the lanes
it sees one request per lane at a time, taking turns. docs/design.md argues why this
keeps every lane FIFO; this package is that argument in code.

Enqueue: one confirmed publish to the lane's partition. Its depth and `position` come
from the process's ledger of the requests it accepted and has not heard settled.

Worker: the partitions it holds are consumed by one process each, with a prefetch
window; a lane deeper than LANE_WINDOW waits in an overflow queue of its own and is fed
back one request at a time. A lane's next request starts only once the one before it
is acknowledged, and the acknowledgement follows the outcome's write. When the process
dies, or lets a partition go, the broker puts every unacknowledged message of the
partition back at its head, in order, in the same step that frees the partition for the
next holder; the holder epochs and attempt deadlines keep a process that lost a
partition from running beside its successor.

Modules: `messages` (a request in its lane), `admission` (the enqueue side, its ledger),
`notices` (settled ids, back to the ledgers), `scheduler` (turns), `dispatcher` (the
worker's broker side), `balance` (which partitions a process holds), `holding` (taking
one), `overflow` (deep lanes), `fencing` and `attempts` (what a worker must show before
it starts anything in a lane), `partitions` (one partition count for every process).
"""
