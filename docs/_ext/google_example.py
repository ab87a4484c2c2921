"""A griffe extension: a Google-style ``Example:`` section is an examples section.

griffe reads ``Examples:`` (plural) as examples, with each ``>>>`` session a code block, but
``Example:`` as an admonition whose ``>>>`` lines Markdown renders as nested quotes. ggr_jax's
docstrings say ``Example:``; this extension reads them as ``Examples:``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)


class GoogleExample(griffe.Extension):
    """Renames the ``Example:`` section heading of every docstring to ``Examples:``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        del kwargs
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
