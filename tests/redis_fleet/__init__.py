"""Helpers for the multi-process tests of the Redis token store: a redis-server on a free
loopback port, the child script each process of a fleet runs, and a driver for a fleet."""
