"""`python -m lanes_client` is the `lanes` command."""

from lanes_client.cli import main

main(prog_name="lanes")
