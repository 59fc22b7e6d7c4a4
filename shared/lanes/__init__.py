"""Lanes: every user gets a FIFO lane of requests, run strictly in order; lanes run concurrently."""
