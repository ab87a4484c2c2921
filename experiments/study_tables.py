"""Study v2's per-grid tables: accuracy, paired differences, uniform-vs-ERK gaps, final active
weights per layer, FLOPs and model size. Each takes runs.csv rows and a pre-registered grid."""

import json

import numpy as np

from experiments import configs, metrics, models
from experiments import study_stats as st
from experiments.configs import study as spec

_INPUT = {"fashion_mnist": (28, 28, 1), "digits": (8, 8, 1), "cifar100": (32, 32, 3),
          "tiny_imagenet": (64, 64, 3)}  # fmt: skip


def ci(p: st.Paired, unit: str = "") -> str:
    """'+0.12 [-0.05, +0.30] tied': a paired difference in pp with its interval and verdict."""
    if p.n == 0:
        return p.verdict
    interval = "" if np.isnan(p.lo) else f" [{100 * p.lo:+.2f}, {100 * p.hi:+.2f}]"
    return f"{100 * p.mean:+.2f}{interval}{unit} {p.verdict}".strip()


def col(grid: spec.Grid, s: float, e: int) -> str:
    """A column title: the sparsity, and the epochs when the grid has several budgets."""
    return f"{100 * s:g} %" + (f", {e} ep" if len(grid.epochs) > 1 else "")


def rows_of(rows: list[dict], grid: spec.Grid) -> list[dict]:
    return [r for r in rows if r["grid"] == grid.name]


def config(grid: spec.Grid):
    """The grid's config with the study's common settings and the grid's overrides applied."""
    c = configs.get_config(grid.config)
    for k, v in (*spec.COMMON.items(), *grid.overrides):
        c[k] = v
    return c


def accuracy_table(rows: list[dict], g: spec.Grid) -> str:
    accs = st.seeds_by_cell(rows, g)
    cols = [(s, e) for e in g.epochs for s in g.sparsities]
    need = len(g.seeds)

    def cell(v):
        if not v:
            return "–"
        x = list(v.values())
        std = np.std(x, ddof=1) if len(x) > 1 else 0.0
        more = f"({len(x)})" if len(x) >= need else f"pending ({len(x)}/{need} seeds)"
        return f"{st.pct(np.mean(x))} ± {st.pct(std)} {more}"

    body = []
    for arm in g.arms:
        if arm.method == "dense":
            dense = [cell(accs.get(("dense", ("-", 0.0, e)))) for _, e in cols]
            body.append(["dense", "–", *dense])
            continue
        for i in g.inits:
            name = f"**{arm.name}**" if arm.name == "ggr" else arm.name
            body.append([name, i, *(cell(accs.get((arm.name, (i, s, e)))) for s, e in cols)])
    return f"Test accuracy %, mean ± std (n seeds of {need}):\n\n" + st.md_table(
        ["arm", "init", *(col(g, s, e) for s, e in cols)], body
    )


def differences_table(rows: list[dict], g: spec.Grid) -> str:
    comps = st.compare_arm(rows, g)
    cols = [(s, e) for e in g.epochs for s in g.sparsities]
    body = []
    for base in spec.BASELINES.values():
        for i in g.inits:
            by = {
                (c.cell[1], c.cell[2]): c.result
                for c in comps
                if c.comparator == base and c.cell[0] == i
            }
            body.append([f"ggr − {base}", i, *(ci(by[k]) for k in cols)])
    return "Paired differences (pp), mean [95 % CI] verdict:\n\n" + st.md_table(
        ["comparison", "init", *(col(g, s, e) for s, e in cols)], body
    )


def gap_table(rows: list[dict], g: spec.Grid) -> str:
    cols = [(s, e) for e in g.epochs for s in g.sparsities]
    arms = [a.name for a in g.arms if a.method not in ("dense",)]
    body = []
    for arm in arms:
        ps = [st.gap_interval(rows, g, arm, s, e) for s, e in cols]
        body.append([f"gap {arm}", *(ci(p) for p in ps)])
    comps = st.claim_b(rows, g)
    for base in spec.BASELINES.values():
        by = {(c.cell[1], c.cell[2]): c.result for c in comps if c.comparator == base}
        body.append([f"gap ggr − gap {base}", *(ci(by[k]) for k in cols)])
    return (
        "Uniform-vs-ERK gap acc(ERK) − acc(uniform) per seed (pp), mean [95 % CI]:\n\n"
        + st.md_table(["", *(col(g, s, e) for s, e in cols)], body)
    )


def layer_table(rows: list[dict], g: spec.Grid, s: float, e: int) -> str:
    rs = [r for r in rows_of(rows, g) if float(r["sparsity"]) == s and int(r["epochs"]) == e]
    if not rs:
        return ""
    size = json.loads(rs[0]["layer_size"])
    body = [["size", "–", *(str(v) for v in size.values())]]
    for arm in (a.name for a in g.arms):
        for i in g.inits:
            sel = [json.loads(r["layer_active"]) for r in rs if (r["arm"], r["init"]) == (arm, i)]
            if sel:
                body.append([arm, i, *(f"{np.mean([a[k] for a in sel]):.0f}" for k in size)])
    return f"Final active weights per layer at {col(g, s, e)} (mean over seeds):\n\n" + st.md_table(
        ["arm", "init", *size], body
    )


def flops_table(rows: list[dict], g: spec.Grid) -> str:
    cols = [(s, e) for e in g.epochs for s in g.sparsities]
    kb = _Bytes(g)
    body = []
    for arm in (a.name for a in g.arms if a.method != "dense"):
        for i in g.inits:
            vals = []
            for s, e in cols:
                rs = [
                    r
                    for r in rows_of(rows, g)
                    if (r["arm"], r["init"]) == (arm, i)
                    and float(r["sparsity"]) == s
                    and int(r["epochs"]) == e
                ]
                if not rs:
                    vals.append("–")
                    continue
                inf = np.mean([float(r["flops_ratio"]) for r in rs])
                tr = np.mean([float(r["training_flops_ratio"]) for r in rs])
                size = np.mean([kb.sparse(r) for r in rs]) / 1000
                vals.append(f"{inf:.4f} / {tr:.4f} / {size:.1f} kB")
            body.append([arm, i, *vals])
    return (
        "FLOPs relative to dense, inference / training (RigL's accounting: dense gradients "
        "at each update, every step for SNFS and GGR's accumulated signals), and the model's "
        f"size as `gj.compress` exports it (bit-packed masks, active values; dense model "
        f"{kb.dense() / 1000:.1f} kB); mean over seeds:\n\n"
        + st.md_table(["arm", "init", *(col(g, s, e) for s, e in cols)], body)
    )


class _Bytes:
    """``gj.model_bytes`` of a grid's model, from a runs.csv row's final active counts."""

    def __init__(self, g: spec.Grid):
        import jax

        c = config(g)
        model = models.create_model(c.model, st.NUM_CLASSES[c.dataset], c.hidden)
        shape = (1, *_INPUT[c.dataset])
        tree = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, "float32"))
        self._leaves = [
            (metrics.layer_name(path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree["params"])[0]
        ]

    def dense(self) -> int:
        import ggr_jax as gj

        return gj.model_bytes([np.zeros(leaf.shape, leaf.dtype) for _, leaf in self._leaves])

    def sparse(self, row: dict) -> int:
        """Exact: the size depends on the active count per sparse leaf, not on where they are."""
        import ggr_jax as gj

        active = json.loads(row["layer_active"])
        params, masks = [], []
        for name, leaf in self._leaves:
            params.append(np.zeros(leaf.shape, leaf.dtype))
            if name in active and row["method"] != "dense":
                mask = np.zeros(leaf.size, bool)
                mask[: active[name]] = True
                masks.append(mask.reshape(leaf.shape))
            else:
                masks.append(None)
        return gj.model_bytes(params, masks)
