"""Named grids for ``python -m experiments.compare --grid NAME``: config × methods × inits ×
sparsities × seeds, plus config overrides applied to every run. Dense runs once per seed."""

from experiments.errors import UserError

ALL_METHODS = ("dense", "static", "set", "rigl", "snfs", "ggr")
# with the dense-to-sparse baseline (gradual magnitude pruning: same steps, but its dense start
# costs training FLOPs, reported as training_flops_ratio)
COMPARE_METHODS = (*ALL_METHODS, "gmp")

GRIDS = {
    # A ~1-minute grid on the bundled digits data (2 seeds, high sparsity).
    "digits_quick": dict(
        config="digits_mlp",
        methods=("dense", "rigl", "ggr"),
        inits=("erk",),
        sparsities=(0.95, 0.98),
        seeds=(0, 1),
        overrides={"num_epochs": 20},
    ),
    # Every method on digits.
    "digits_all": dict(
        config="digits_mlp",
        methods=COMPARE_METHODS,
        inits=("uniform", "erk"),
        sparsities=(0.9, 0.95, 0.98),
        seeds=(0, 1, 2),
        overrides={},
    ),
    # Issue 5's reproduction study: LeNet-300-100 on Fashion-MNIST.
    "fashion_mnist_lenet300": dict(
        config="fashion_mnist_lenet300",
        methods=COMPARE_METHODS,
        inits=("uniform", "erk"),
        sparsities=(0.9, 0.95, 0.98, 0.99),
        seeds=(0, 1, 2),
        overrides={},
    ),
    "fashion_mnist_lenet5": dict(
        config="fashion_mnist_lenet5",
        methods=COMPARE_METHODS,
        inits=("uniform", "erk"),
        sparsities=(0.9, 0.95, 0.98),
        seeds=(0, 1, 2),
        overrides={},
    ),
    # The paper's tables (hours to days per run on a GPU).
    "cifar100_vgg16_paper": dict(
        config="cifar100_vgg16",
        methods=("static", "set", "rigl", "snfs", "ggr"),
        inits=("uniform", "erk"),
        sparsities=(0.9, 0.95, 0.98),
        seeds=(0, 1, 2),
        overrides={},
    ),
    "cifar100_mobilenetv2_paper": dict(
        config="cifar100_mobilenetv2",
        methods=("static", "set", "rigl", "snfs", "ggr"),
        inits=("uniform", "erk"),
        sparsities=(0.9, 0.95, 0.98),
        seeds=(0, 1, 2),
        overrides={},
    ),
}

# The study grids (v2, issue 9) live in experiments/configs/study.py: `python -m experiments.study`.


def get_grid(name: str) -> dict:
    if name not in GRIDS:
        raise UserError(f"unknown grid {name!r}; choose one of: {', '.join(GRIDS)}")
    return dict(GRIDS[name])
