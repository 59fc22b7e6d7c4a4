# gunicorn settings of the enqueue function, for the local runner and the container alike.
# The shared defaults live in lanes.gunicorn_conf; I/O-bound: many concurrent requests on one event loop.
from lanes import gunicorn_conf

globals().update(gunicorn_conf.settings("enqueue", worker_class="gevent"))
