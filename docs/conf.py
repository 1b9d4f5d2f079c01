"""Sphinx configuration for the payme_auth documentation.

Build with ``nox -s docs`` (warnings are errors). No intersphinx: the build must work
with no network access.
"""

from __future__ import annotations

import sys
from pathlib import Path

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
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

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
# "Attributes:" sections as :ivar: fields, so they don't clash with autodoc's members.
napoleon_use_ivar = True

# HTML
html_theme = "furo"
html_title = f"payme_auth {release}"
