# gunicorn settings of the status function, for the local runner and the container alike.
# The shared defaults live in lanes.gunicorn_conf; I/O-bound: many concurrent requests on one event loop.
from lanes import gunicorn_conf

globals().update(gunicorn_conf.settings("status", worker_class="gevent"))
