"""Every Python snippet of the docs site and the README runs, page by page.

The ```python blocks of a page run in order in one namespace, as a reader would paste them.
Command lines of the experiments CLI (``python -m experiments.train ...`` in ```bash blocks) are
parsed with ``--show-config``: every flag must exist and every value must parse (no training).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# docs/results*.md are written by experiments.study (tables and plots, no snippets)
PAGES = sorted(
    p.relative_to(ROOT).as_posix()
    for p in [ROOT / "README.md", *DOCS.rglob("*.md")]
    if not p.relative_to(DOCS if p.is_relative_to(DOCS) else ROOT).as_posix().startswith("results")
)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)

pytestmark = pytest.mark.standard_dtype_promotion  # snippets go through optax


INCLUDE = re.compile(r'^--8<-- "([^"]+)"\s*$', re.M)  # pymdownx.snippets: a file shown whole


def blocks(page: str, lang: str) -> list[str]:
    """The bodies of the page's ``lang`` code blocks, included files read in."""
    found = [body for kind, body in FENCE.findall((ROOT / page).read_text()) if kind == lang]
    return [INCLUDE.sub(lambda m: (ROOT / m.group(1)).read_text(), body) for body in found]


def cli_lines(page: str, module: str) -> list[list[str]]:
    """The argument lists of ``python -m <module> ...`` lines in the page's bash blocks."""
    out = []
    for body in blocks(page, "bash"):
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:3] == ["python", "-m", module]:
                out.append(words[3:])
    return out


def test_pages_are_found():
    assert "README.md" in PAGES and "docs/getting-started.md" in PAGES
    assert not any(p.startswith("docs/results") for p in PAGES)


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")])
def test_python_snippets_run(page, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # snippets that write files write them here
    namespace: dict = {"__name__": f"docs:{page}"}
    # user code, as users run it: bias adds broadcast (conftest makes rank promotion raise)
    with jax.numpy_rank_promotion("allow"):
        for i, code in enumerate(blocks(page, "python")):
            try:
                exec(compile(code, f"{page} [python block {i + 1}]", "exec"), namespace)
            except Exception as e:
                raise AssertionError(f"{page}, python block {i + 1} failed: {e!r}") from e


@pytest.mark.parametrize("page", [p for p in PAGES if cli_lines(p, "experiments.train")])
def test_train_command_lines_parse(page):
    from experiments import main

    for args in cli_lines(page, "experiments.train"):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main.train_main([*args, "--show-config"]) == 0, args
        assert "sparsity" in out.getvalue(), args
