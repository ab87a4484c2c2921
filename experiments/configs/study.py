"""Study v2 (issue 9), pre-registered: the grids, the arms, the decision rules.

Everything the report's verdicts depend on is fixed here before the runs, and docs/results.md
restates it (``experiments.study_report`` reads these constants; nothing is restated by hand).

* ``select`` and ``select2``: GGR's variants on the **validation** split only (10,000 of the
  60,000 Fashion-MNIST training images held out, split seed 0). ``ggr()``'s defaults are the
  variant these grids choose by :data:`SELECTION_RULE`.
* ``A``-``D``: the final grids, on the **test** split, every method with the same seeds, data
  order and budget.
"""

import dataclasses

# Every study run: LeNet-300-100-style schedule, validation split held out of the training set.
COMMON = {
    "validation_size": 10000,
    "validation_seed": 0,
    "checkpoint_every_epochs": 5,
    "keep_checkpoints": 1,
}

MIN_EFFECT = 0.003  # 0.3 pp: smaller differences do not matter
CONFIDENCE = 0.95  # t-intervals over seeds of paired differences
CHANCE_MARGIN = 0.05  # a cell where every method is below chance + 5 pp is "untestable"
SELECTION_RULE = (
    "the arm with the highest mean validation accuracy over the grid's cells (mean over "
    "sparsities x inits x seeds) wins; an arm that adds options to another replaces it only if "
    "its mean is higher by at least 0.1 pp"
)
SELECTION_MARGIN = 0.001


@dataclasses.dataclass(frozen=True)
class Arm:
    """One method with its settings: ``name`` labels it in runs.csv and the tables."""

    name: str
    method: str
    overrides: tuple[tuple[str, object], ...] = ()


@dataclasses.dataclass(frozen=True)
class Grid:
    """Arms x inits x sparsities x seeds (x epochs) of one config; dense runs once per seed."""

    name: str
    config: str
    arms: tuple[Arm, ...]
    inits: tuple[str, ...]
    sparsities: tuple[float, ...]
    seeds: tuple[int, ...]
    epochs: tuple[int, ...]
    overrides: tuple[tuple[str, object], ...] = ()
    split: str = "test"  # the split the grid reports: "val" (selection) or "test" (final)
    question: str = ""


def ggr_arm(name: str, **options) -> Arm:
    fields = {
        "rho": "ggr_rho",
        "normalize": "ggr_normalize",
        "signal": "ggr_signal",
        "unit_floor": "ggr_unit_floor",
    }
    return Arm(name, "ggr", tuple((fields[k], v) for k, v in sorted(options.items())))


# --- selection (validation split) ---------------------------------------------------------------

NORMALIZE = ("none", "l2", "rms", "weight")
SIGNAL = ("batch", "mean", "ema")
SELECT_ARMS = tuple(
    ggr_arm(f"ggr-{n}-{s}", normalize=n, signal=s, rho=0.5) for n in NORMALIZE for s in SIGNAL
)
# Stage 1's winner by SELECTION_RULE (filled in from runs.csv before stage 2 was defined:
# `python -m experiments.study selection` on the 96 rows of grid select, 2026-11-30).
STAGE1 = "ggr-l2-mean"
_SELECT = dict(
    config="fashion_mnist_lenet300",
    inits=("uniform", "erk"),
    sparsities=(0.98, 0.995),
    seeds=(100, 101),
    epochs=(30,),
    split="val",
)


def stage2_arms(winner: Arm) -> tuple[Arm, ...]:
    """Stage 2 varies the per-unit floor and the gradient share rho around stage 1's winner."""
    base = dict(winner.overrides)
    options = {"normalize": base["ggr_normalize"], "signal": base["ggr_signal"]}
    return (
        ggr_arm(f"{winner.name}-floor", **options, rho=0.5, unit_floor=True),
        ggr_arm(f"{winner.name}-rho1", **options, rho=1.0),
        ggr_arm(f"{winner.name}-rho1-floor", **options, rho=1.0, unit_floor=True),
    )


# --- final grids (test split) -------------------------------------------------------------------

BASELINES = {"per-layer": "rigl", "redistribution": "snfs"}  # claim (a) and (b) comparators
GGR_V1 = ggr_arm("ggr-v1", normalize="none", signal="batch", rho=0.5)  # the old defaults
ARM = {m: Arm(m, m) for m in ("dense", "static", "set", "rigl", "snfs")}
ARM["ggr"] = Arm("ggr", "ggr")  # the library defaults at the commit of the run


def _grids() -> dict[str, Grid]:
    three = (ARM["rigl"], ARM["snfs"], ARM["ggr"])
    g = {
        "select": Grid("select", arms=SELECT_ARMS, question="Which GGR variant?", **_SELECT),
        "A": Grid(
            "A",
            "fashion_mnist_lenet300",
            arms=(
                ARM["dense"],
                ARM["static"],
                ARM["set"],
                ARM["rigl"],
                ARM["snfs"],
                ARM["ggr"],
                GGR_V1,
            ),
            inits=("uniform", "erk"),
            sparsities=(0.98, 0.99, 0.995),
            seeds=(0, 1, 2, 3, 4),
            epochs=(30,),
            question="LeNet-300-100: GGR's defaults vs RigL and SNFS",
        ),
        "B": Grid(
            "B",
            "fashion_mnist_lenet300",
            arms=three,
            inits=("uniform", "erk"),
            sparsities=(0.98,),
            seeds=(0, 1, 2),
            epochs=(10, 60),
            question="Does the ranking change with the training budget?",
        ),
        "C": Grid(
            "C",
            "fashion_mnist_lenet300",
            arms=three,
            inits=("uniform", "erk"),
            sparsities=(0.98, 0.99),
            seeds=(0, 1, 2, 3, 4),
            epochs=(20,),
            overrides=(("hidden", (1024, 512, 256, 128)),),
            question="A deeper MLP with unequal layers (784-1024-512-256-128-10)",
        ),
        "D": Grid(
            "D",
            "fashion_mnist_lenet5",
            arms=three,
            inits=("uniform", "erk"),
            sparsities=(0.95, 0.98),
            seeds=(0, 1, 2),
            epochs=(10,),
            question="LeNet-5",
        ),
    }
    if STAGE1 is not None:
        winner = next(a for a in SELECT_ARMS if a.name == STAGE1)
        g["select2"] = Grid(
            "select2",
            arms=(winner, *stage2_arms(winner)),
            question="Floor and rho around stage 1's winner",
            **_SELECT,
        )
    return g


GRIDS = _grids()
ORDER = ("select", "select2", "A", "B", "C", "D")
