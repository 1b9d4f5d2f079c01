"""The package logger: one name, ``payme_auth``, for every record the library writes.

Records name tokens by fingerprint only and carry error texts already scrubbed of secrets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["attached", "logger"]

logger = logging.getLogger("payme_auth")


@contextmanager
def attached(
    handler: logging.Handler, *, to: logging.Logger = logger, level: int | None = None
) -> Iterator[None]:
    """While active, *to* also sends its records to *handler*, at *level* if one is given."""
    previous = to.level
    to.addHandler(handler)
    if level is not None:
        to.setLevel(level)
    try:
        yield
    finally:
        to.removeHandler(handler)
        to.setLevel(previous)
