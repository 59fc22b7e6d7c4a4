# The baselines' HTTP front runs as Lanes' enqueue function does under the local runner:
# one gunicorn process with gevent (functions/enqueue/gunicorn.conf.py, WEB_CONCURRENCY=1).
import os

bind = os.environ.get("BIND", "127.0.0.1:8090")
workers = 1
worker_class = "gevent"
worker_connections = 200
graceful_timeout = 20
timeout = 30
keepalive = 5
accesslog = None
errorlog = "-"
loglevel = "warning"
