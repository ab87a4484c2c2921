"""Run in a fresh venv that holds only the installed wheel: what it pulled in, and the quickstart.

Usage: ``python .ci/check_wheel.py README.md`` (from any folder: ``ggr_jax`` must come from the
wheel, not from a checkout).

Checks that the wheel's dependencies are jax, optax and numpy (and what they need) with nothing of
the experiment stack, that ``ggr_jax`` was imported from site-packages with its ``py.typed``, and
runs the Python blocks of the README's "Quickstart: the library" section.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

EXPERIMENT_STACK = {
    "flax",
    "orbax-checkpoint",
    "tensorflow-datasets",
    "tensorflow",
    "matplotlib",
    "tqdm",
    "scikit-learn",
    "ml-collections",
    "tensorboardx",
    "chex",
    "equinox",
    "mkdocs",
}


def installed() -> set[str]:
    """Normalised names of the installed distributions."""
    dists = importlib.metadata.distributions()
    return {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in dists}


def quickstart_blocks(readme: str) -> list[str]:
    section = readme.split("## Quickstart: the library", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```", section, re.S | re.M)


def main(readme_path: str) -> int:
    names = installed()
    unwanted = sorted(names & EXPERIMENT_STACK)
    if unwanted:
        print(f"error: the wheel pulled in {unwanted}", file=sys.stderr)
        return 1
    for required in ("ggr-jax", "jax", "jaxlib", "optax", "numpy"):
        if required not in names:
            print(f"error: {required} is not installed", file=sys.stderr)
            return 1
    print("installed:", ", ".join(sorted(names)))

    import ggr_jax

    package = Path(ggr_jax.__file__).parent
    if "site-packages" not in package.parts or not (package / "py.typed").is_file():
        print(f"error: ggr_jax from {package}, py.typed missing or not the wheel", file=sys.stderr)
        return 1
    print(f"ggr_jax {ggr_jax.__version__} from {package} (py.typed present)")

    blocks = quickstart_blocks(Path(readme_path).read_text())
    if not blocks:
        print("error: no python blocks in the README's library quickstart", file=sys.stderr)
        return 1
    namespace: dict = {"__name__": "__quickstart__"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README quickstart block {i + 1}", "exec"), namespace)
    print(f"README library quickstart: {len(blocks)} blocks ran")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
