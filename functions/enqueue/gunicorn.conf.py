# gunicorn settings for this function; the local runner and the container both use them.
import os

from lanes import gunicorn_conf

FUNCTION = "enqueue"
# Before the app (and prometheus_client) is imported: metrics go to files in this
# function's own directory, shared by its processes (see lanes.gunicorn_conf).
gunicorn_conf.use_metrics_dir(FUNCTION)

bind = os.environ.get("BIND", "0.0.0.0:8080")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = os.environ.get("WORKER_CLASS", "gevent")
threads = int(os.environ.get("THREADS", "4"))
worker_connections = 200
# Functions finish in-flight requests on SIGTERM within the platform's grace period.
graceful_timeout = 20
timeout = 30
keepalive = 5
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# JSON lines from gunicorn itself too; ACCESS_LOG=true adds its access log.
logconfig_dict = gunicorn_conf.logconfig_dict(FUNCTION, loglevel)
on_starting = gunicorn_conf.on_starting
child_exit = gunicorn_conf.child_exit
