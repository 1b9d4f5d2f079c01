"""Sphinx configuration for the payme_auth documentation.

Build with ``nox -s docs`` (warnings are errors, and a reference that leads nowhere is a
warning: ``nitpicky``). The build has no network: intersphinx links the outside names
(Python, httpx, respx, redis-py, requests, cryptography) from the small inventories in
``_inventories/``, written by ``_inventories/make.py``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

# Document the source tree this file sits in, whatever is installed.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import payme_auth  # noqa: E402

project = "payme_auth"
author = "The payme_auth developers"
copyright = author  # noqa: A001  (Sphinx's own setting name)
release = payme_auth.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_inventories"]

# MyST
myst_heading_anchors = 3
myst_enable_extensions = ["substitution"]
myst_substitutions = {"api_version": payme_auth.API_VERSION}

# autodoc
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_member_order = "bysource"
autoclass_content = "class"

# napoleon (Google-style docstrings)
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Attributes:" sections as attribute entries: each is a target that :attr: can link to
# (an :ivar: field is not). attrs fields are slots without docstrings, which autodoc's
# :members: leaves out, so nothing is documented twice.
napoleon_use_ivar = False

# Every reference must lead somewhere.
nitpicky = True
nitpick_ignore = [
    # The private sentinel type of PaymeTokenMock.issue()'s "not given" default.
    ("py:class", "payme_auth.testing._mock._Default"),
    # What `timeout` accepts besides seconds: httpx.Timeout or anything with its four phases
    # (httpx2.Timeout); the PaymeAuth docstring says so in words.
    ("py:class", "TimeoutLike"),
    # The type variable of from_env(): the class it is called on.
    ("py:class", "payme_auth._auth._Auth"),
]
# `PaymeAuth` names both plugs (payme_auth's and payme_auth.httpx2's); in a signature the one
# of the module at hand is meant, which Sphinx finds but still reports as ambiguous.
suppress_warnings = ["ref.python"]

# intersphinx, offline: (the public documentation, the inventory kept here).
intersphinx_mapping = {
    "python": ("https://docs.python.org/3/", "_inventories/python.inv"),
    "httpx": ("https://www.python-httpx.org/", "_inventories/httpx.inv"),
    "respx": ("https://lundberg.github.io/respx/", "_inventories/respx.inv"),
    "redis": ("https://redis.readthedocs.io/en/stable/", "_inventories/redis.inv"),
    "requests": ("https://requests.readthedocs.io/en/latest/", "_inventories/requests.inv"),
    "cryptography": ("https://cryptography.io/en/latest/", "_inventories/cryptography.inv"),
}
intersphinx_timeout = 1

# Names as the code imports them, and the names their documentation uses.
_ALIASES = {"aioredis.Redis": "redis.asyncio.Redis"}
# Defaults whose repr is not Python, which would break the parsing of a signature.
_SIGNATURE_FIXES = {"<built-in function monotonic>": "time.monotonic"}

# HTML
html_theme = "furo"
html_title = f"payme_auth {release}"


def _fix_signature(  # noqa: PLR0917 - the signature of Sphinx's event
    app: Any,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    annotation: str | None,
) -> tuple[str | None, str | None] | None:
    """Make a signature parseable: a default such as ``<built-in function monotonic>``
    would make Sphinx fall back to splitting it on colons (``'post:charges'``)."""
    if signature is None:
        return None
    fixed = signature
    for shown, written in _SIGNATURE_FIXES.items():
        fixed = fixed.replace(shown, written)
    fixed = re.sub(r"<function (\w+)[^>]*>", r"\1", fixed)
    return fixed, annotation


def _resolve_alias(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve an aliased name (``aioredis.Redis``) as the name it stands for."""
    target = node.get("reftarget")
    if target not in _ALIASES:
        return None
    from sphinx.ext import intersphinx

    node["reftarget"] = _ALIASES[target]
    return intersphinx.missing_reference(app, env, node, contnode)


def setup(app: Any) -> None:
    """Connect the handlers above."""
    app.connect("autodoc-process-signature", _fix_signature)
    app.connect("missing-reference", _resolve_alias, priority=400)
