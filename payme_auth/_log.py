"""The package logger: one name, ``payme_auth``, for every record the library writes.

Records name tokens by fingerprint only and carry error texts already scrubbed of secrets.
"""

from __future__ import annotations

import logging

__all__ = ["logger"]

logger = logging.getLogger("payme_auth")
