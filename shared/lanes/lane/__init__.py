"""The lane protocol: every lane is hashed to one of LANE_PARTITIONS durable queues, a
partition is consumed by one worker process at a time, and that process runs the lanes
it sees one request per lane at a time, taking turns. docs/design.md argues why this
keeps every lane FIFO; this package is that argument in code.

Enqueue: one confirmed publish to the lane's partition. Its depth and `position` come
from the process's ledger of the requests it accepted and has not heard settled.

Worker: the partitions it holds are consumed with an exclusive consumer and no prefetch
limit, so every waiting request is in the process's scheduler. A lane's next request
starts only once the one before it is acknowledged, and the acknowledgement follows
the outcome's write. When the process dies, or lets a partition go, the broker puts
every unacknowledged message of the partition back at its head, in order, in the same
step that frees the partition for the next holder.

Modules: `messages` (a request in its lane), `admission` (the enqueue side), `scheduler`
(turns), `dispatcher` (the worker's broker side), `fencing` (what a worker must show
before it starts anything in a lane).
"""
