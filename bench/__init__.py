"""Lanes' benchmark: Lanes side by side with raw RabbitMQ, a bare enqueue endpoint and Celery.

    python -m bench [--quick]

Every scenario starts what it measures (its own RabbitMQ vhost, its own database,
its own processes on free ports), runs its baselines in the same run, and stops
everything it started, by PID, on success, error or Ctrl-C. Results go to
bench/results/latest.json, latest.md and PNG plots.
"""
