# gunicorn settings of the register function, for the local runner and the container alike.
# The shared defaults live in lanes.gunicorn_conf; argon2 hashing is CPU-bound: threads, not an event loop.
from lanes import gunicorn_conf

globals().update(gunicorn_conf.settings("register", worker_class="gthread"))
