"""Prints ``name==lower-bound`` for the named core dependencies of pyproject.toml (and jaxlib).

Usage: ``python .ci/oldest.py pyproject.toml jax optax numpy`` -> ``jax==0.6.0 jaxlib==0.6.0
optax==0.2.4 numpy==1.26``. Refuses a dependency without a ``>=`` lower bound.
"""

from __future__ import annotations

import re
import sys

import tomllib


def main(path: str, names: list[str]) -> int:
    with open(path, "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    bounds = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)", dep.strip())
        if m:
            bounds[m.group(1).lower()] = m.group(2)
    pins = []
    for name in names:
        if name not in bounds:
            print(f"error: {name} has no '>=' lower bound in {path}", file=sys.stderr)
            return 1
        pins.append(f"{name}=={bounds[name]}")
        if name == "jax":
            pins.append(f"jaxlib=={bounds[name]}")
    print(" ".join(pins))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
