"""Benchmarks of payme_auth against a floor and its peers (Authlib, httpx-auth).

Run ``python -m benchmarks`` (or ``nox -s bench``); see ``docs/performance.md``.
"""
