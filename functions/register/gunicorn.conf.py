# gunicorn settings for this function; the local runner and the container both use them.
import os

bind = os.environ.get("BIND", "0.0.0.0:8080")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = os.environ.get("WORKER_CLASS", "gthread")
threads = int(os.environ.get("THREADS", "4"))
worker_connections = 200
# Functions finish in-flight requests on SIGTERM within the platform's grace period.
graceful_timeout = 20
timeout = 30
keepalive = 5
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
