"""Every config builds and trains a couple of steps (mock TFDS data for the image datasets), and
every method × init trains on digits with a topology update in the first steps."""

import functools

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import build, configs, data, flops, main, methods, metrics, models, steps, training

SMALL = [
    "--batch_size=4",
    "--eval_batch_size=4",
    "--num_train_steps=2",
    "--steps_per_eval=1",
    "--data_source=tfds",
    "--method=ggr",
]
# Compiling dominates these tests on a 2-core CPU (VGG16 ~20 s, MobileNetV2 ~40 s, redistribute
# over MobileNetV2's 53 sparse layers minutes more), so each config runs its plain train step; the
# topology update runs under lax.cond for LeNet-5 (conv kernels) and for every method on digits
# below; tiny_imagenet_mobilenetv2 traces its whole update step (shapes, dtypes) without compiling.
RUN = {  # config -> flags of the real 2-step run
    "digits_mlp": ["--delta_t=100"],  # updates on digits: test_every_method_on_digits
    "fashion_mnist_lenet300": ["--delta_t=100"],
    "fashion_mnist_lenet5": ["--delta_t=1", "--topology_update=cond"],  # conv kernels, lax.cond
    "cifar100_vgg16": ["--delta_t=100"],
    "tiny_imagenet_vgg16": ["--delta_t=100"],
    "cifar100_mobilenetv2": ["--delta_t=100"],
}


@pytest.mark.parametrize("name", list(RUN))
def test_config_trains_a_couple_of_steps(name, tmp_path):
    config = main.build_config(name, SMALL + RUN[name])
    update = config.delta_t == 1
    with tfds.testing.mock_data(num_examples=8):
        results = training.train_and_evaluate(config, str(tmp_path), progress=False)
    assert results["steps"] == 2 and 0.0 <= results["test_accuracy"] <= 1.0
    assert results["density"] == pytest.approx(1 - config.sparsity, abs=1e-3)
    assert 0 < results["flops_ratio"] < 1
    records = metrics.read(tmp_path / "metrics.jsonl")
    kinds = {r["type"] for r in records}
    assert {"init", "eval", "final"} <= kinds
    assert ("topology" in kinds) == update
    assert (tmp_path / "density_over_time.png").stat().st_size > 0


def test_tiny_imagenet_mobilenetv2_builds_and_traces_a_topology_step():
    config = main.build_config("tiny_imagenet_mobilenetv2", SMALL)
    with tfds.testing.mock_data(num_examples=8):
        ds = data.load_dataset(config)
    assert ds.input_shape == (64, 64, 3) and ds.num_classes == 200
    model = models.create_model(config.model, ds.num_classes)
    method = methods.make_method(config)
    tx = methods.make_optimizer(config, method, 2)
    state = jax.eval_shape(
        lambda: steps.create_train_state(config, model, tx, ds.input_shape, method)
    )
    batch = (jax.ShapeDtypeStruct((4, 64, 64, 3), np.uint8), jax.ShapeDtypeStruct((4,), np.int32))
    step = functools.partial(
        steps.train_step,
        model=model,
        tx=tx,
        cfg=steps.step_config(config, ds, 100, method),
        topology=True,
    )
    new_state, out, info = jax.eval_shape(step, state, batch)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert len(jax.tree.leaves(info["active"])) == 53 and out["loss"].shape == ()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    assert len(flops.kernel_flops(model, variables, ds.input_shape)) == 53


def test_every_config_is_covered():
    assert set(RUN) | {"tiny_imagenet_mobilenetv2"} == set(configs.NAMES)


@pytest.mark.parametrize("method", methods.METHODS)
def test_every_method_on_digits(method, tmp_path):
    config = main.build_config(
        "digits_mlp",
        [
            "--num_train_steps=3",
            "--delta_t=1",
            f"--method={method}",
            "--init=uniform",
            "--sparsity=0.9",
            "--topology_update=cond",
        ],
    )
    results = training.train_and_evaluate(config, str(tmp_path), progress=False)
    records = metrics.read(tmp_path / "metrics.jsonl")
    topology = [r for r in records if r["type"] == "topology"]
    if method in ("dense", "static"):
        assert topology == []
        assert results["density"] == (1.0 if method == "dense" else pytest.approx(0.1, abs=1e-3))
    else:
        assert [r["step"] for r in topology] == [1, 2]
        for r in topology:
            assert sum(r["dropped"].values()) == sum(r["grown"].values()) > 0
            assert r["moved"] >= 0 and not r["skipped"]
            assert r["global_density"] == pytest.approx(0.1, abs=1e-3)
        if method in ("set", "rigl"):
            assert all(r["moved"] == 0 for r in topology)


def test_initial_densities_uniform_dense_first_and_erk():
    import ggr_jax as gj

    model = models.create_model("mlp", 10)
    params = model.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.float32))["params"]
    key = jax.random.PRNGKey(1)

    def densities(**kw):
        masks = steps._initial_masks(params, key, **kw)
        return [float(d) for d in jax.tree.leaves(gj.mask_densities(masks))]

    common = {"method": "ggr", "sparsity": 0.5}
    assert densities(init="uniform", dense_first=True, **common)[0] == 1.0
    erk = densities(init="erk", dense_first=False, **common)
    assert len({round(d, 3) for d in erk}) == 3
    dense = densities(init="erk", dense_first=False, method="dense", sparsity=0.5)
    assert dense == [1.0, 1.0, 1.0]


def test_cond_and_separate_topology_updates_agree(tmp_path):
    """The lax.cond step and the separately jitted update step compute the same training run."""
    finals = {}
    for mode in ("cond", "separate"):
        config = main.build_config(
            "digits_mlp",
            ["--num_train_steps=12", "--delta_t=4", "--method=ggr", f"--topology_update={mode}"],
        )
        training.train_and_evaluate(config, str(tmp_path / mode), progress=False)
        finals[mode] = metrics.read(tmp_path / mode / "metrics.jsonl")
    tops = {
        m: [(r["step"], r["active"], r["moved"]) for r in recs if r["type"] == "topology"]
        for m, recs in finals.items()
    }
    assert tops["cond"] == tops["separate"] and len(tops["cond"]) == 2
    acc = {m: recs[-1]["test_accuracy"] for m, recs in finals.items()}
    np.testing.assert_allclose(acc["cond"], acc["separate"], atol=0.02)


def test_one_device_mesh_shapes():
    replicated, batch = build.mesh_shardings(8, 8)
    assert replicated.mesh.size == jax.device_count() and batch.spec == jax.sharding.PartitionSpec(
        "data"
    )


def test_config_ggr_fields_are_the_library_defaults():
    # Arm `ggr` of the study runs the config's GGR fields: they must be ggr()'s defaults.
    import ggr_jax as gj

    for name in configs.NAMES:
        config = configs.get_config(name)
        config.method = "ggr"
        assert methods.make_method(config) == gj.ggr(), name
