"""Optax transforms: masking, and dynamic_sparse end to end over short training loops."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import ggr_jax as gj

pytestmark = pytest.mark.standard_dtype_promotion  # optax's adam & co. are not strict-clean

SPARSE = {"a": (8, 6), "b": (6, 4)}  # distinct shapes: per-weight optimizer state is found by shape


def model(dtype=jnp.float32, seed=0):
    params = {
        "a": jnp.zeros((8, 6), dtype),
        "b": jnp.zeros((6, 4), dtype),
        "bias": jnp.zeros(4, dtype),
    }
    masks = gj.random_masks(params, gj.erk_densities(params, 0.6), jax.random.key(seed))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), dtype), params)
    return gj.apply_masks(params, masks), masks


def per_weight_state(state):
    """{name: [leaves]} of the params-shaped arrays of the sparse leaves in any state."""
    out = {k: [] for k in SPARSE}
    for x in jax.tree.leaves(state):
        for k, s in SPARSE.items():
            if getattr(x, "shape", None) == s:
                out[k].append(np.asarray(x, np.float32))
    return out


# --- mask_gradients / mask_updates ------------------------------------------------------------


def test_masked_chain_keeps_inactive_weights_zero():
    params, masks = model()
    tx = optax.chain(gj.mask_gradients(), optax.adamw(1e-2, weight_decay=0.5), gj.mask_updates())
    state = tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(pred, grads, state, params, masks):
        def update(state):
            updates, state = tx.update(grads, state, params, masks=masks)
            return optax.apply_updates(params, updates), state

        return lax.cond(pred, update, lambda s: (params, s), state)

    rng = np.random.default_rng(1)
    for _ in range(10):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        new_params, state = step(True, grads, state, params, masks)
        for k in SPARSE:
            assert not bool(jnp.where(masks[k], 0, new_params[k]).any())
            assert bool((new_params[k] != params[k])[masks[k]].all())  # active weights train
        assert bool((new_params["bias"] != params["bias"]).all())
        params = new_params
    # optimizer moments of inactive weights never see a gradient
    for k, leaves in per_weight_state(state).items():
        for x in leaves:
            assert not np.any(x[~np.asarray(masks[k])])


def test_masking_needs_masks():
    params, _ = model()
    for tx in (gj.mask_gradients(), gj.mask_updates()):
        with pytest.raises(
            ValueError, match=r"needs the masks: call tx.update\(..., masks=masks\)"
        ):
            tx.update(params, tx.init(params), params)


def test_mask_updates_checks_masks():
    params, masks = model()
    tx = optax.chain(optax.sgd(0.1), gj.mask_updates())
    bad = {**masks, "a": masks["a"].astype(jnp.float32)}
    with pytest.raises(ValueError, match="masks leaf 'a' must be a bool array"):
        tx.update(params, tx.init(params), params, masks=bad)


# --- dynamic_sparse ---------------------------------------------------------------------------

UPDATE_EVERY, END_STEP, STEPS = 3, 10, 13
DUE = {t for t in range(STEPS) if t > 0 and t % UPDATE_EVERY == 0 and t < END_STEP}  # 3, 6, 9

METHODS = {
    "ggr": gj.ggr(),
    "ggr_accumulated": gj.ggr(rho=1.0, normalize="max", signal="mean_abs"),
    "ggr_mean_rms": gj.ggr(normalize="rms", signal="mean", unit_floor=True),
    "ggr_ema_weight": gj.ggr(rho=1.0, normalize="weight", signal="ema"),
    "rigl": gj.rigl(),
    "rigl_accumulated": gj.rigl(signal="mean_abs"),
    "set": gj.set(),
    "snfs": gj.snfs(),
    "static": gj.static(),
}


def train(tx, params, steps, seed=2, check=None):
    """Runs ``steps`` jitted steps (inside lax.cond) and calls ``check`` after each."""
    state = tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(pred, grads, state, params):
        def update(state):
            updates, state = tx.update(grads, state, params)
            return updates, state

        return lax.cond(pred, update, lambda s: (jax.tree.map(jnp.zeros_like, params), s), state)

    rng = np.random.default_rng(seed)
    for t in range(steps):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        updates, new_state = step(True, grads, state, params)
        new_params = optax.apply_updates(params, updates)
        if check is not None:
            check(t, params, state, updates, new_params, new_state)
        params, state = new_params, new_state
    # a False branch leaves the state exactly as it was
    zero, same = step(False, grads, state, params)
    chex.assert_trees_all_equal(same, state)
    assert not any(bool(u.any()) for u in jax.tree.leaves(zero))
    return params, state


def test_dynamic_sparse_every_optimizer(optimizer):
    battery(optimizer, "rigl")  # the cheapest to compile; the methods are covered below


@pytest.mark.parametrize("method_name", sorted(set(METHODS) - {"rigl"}))
def test_dynamic_sparse_every_method(method_name):
    battery(optax.sgd(0.1, momentum=0.9), method_name)


def battery(inner, method_name):
    """A 13-step training loop with topology updates at steps 3, 6 and 9, checked every step."""
    method = METHODS[method_name]
    params, masks = model()
    total = sum(int(masks[k].sum()) for k in SPARSE)
    counts0 = {k: int(masks[k].sum()) for k in SPARSE}
    tx = gj.dynamic_sparse(
        inner,
        masks,
        key=jax.random.key(3),
        method=method,
        update_every=UPDATE_EVERY,
        end_step=END_STEP,
        drop_fraction=0.3,
    )
    changed_at = set()

    def check(t, params, state, updates, new_params, new_state):
        old_m, new_m = gj.get_masks(state), gj.get_masks(new_state)
        assert int(new_state.step) == t + 1
        assert new_m["bias"] is None
        assert jax.tree.structure(new_m, is_leaf=lambda x: x is None) == jax.tree.structure(
            masks, is_leaf=lambda x: x is None
        )
        for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
            assert u.dtype == p.dtype
        if any(bool((old_m[k] != new_m[k]).any()) for k in SPARSE):
            changed_at.add(t)
        assert sum(int(new_m[k].sum()) for k in SPARSE) == total
        if method_name in ("rigl", "rigl_accumulated", "set", "static"):
            assert {k: int(new_m[k].sum()) for k in SPARSE} == counts0
        inner = per_weight_state(new_state.inner_state)
        for k in SPARSE:
            m_new = np.asarray(new_m[k])
            assert new_m[k].dtype == jnp.bool_
            p_new = np.asarray(new_params[k])
            assert not np.any(p_new[~m_new])  # exactly 0 outside the masks
            for x in inner[k]:  # optimizer state of inactive (and just pruned) weights is 0
                assert not np.any(x[~m_new])
        if t in DUE:
            assert not bool(new_state.info["skipped"])
            assert int(new_state.info["active"]["a"]) == int(new_m["a"].sum())

    train(tx, params, STEPS, check=check)
    if method_name == "static":
        assert changed_at == set()
    else:
        assert changed_at == DUE  # on schedule only, and every scheduled update moves something


@pytest.mark.parametrize(
    "inner", [optax.sgd(0.1, momentum=0.9), optax.adam(1e-2)], ids=["sgd_momentum", "adam"]
)
def test_dynamic_sparse_bf16(inner):
    params, masks = model(jnp.bfloat16)
    tx = gj.dynamic_sparse(
        inner, masks, key=jax.random.key(3), method=gj.ggr(), update_every=2, end_step=10
    )

    def check(t, params, state, updates, new_params, new_state):
        assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(updates))
        assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(new_params))
        for old, new in zip(jax.tree.leaves(state), jax.tree.leaves(new_state), strict=True):
            assert old.dtype == new.dtype
        new_m = gj.get_masks(new_state)
        for k in SPARSE:
            assert not bool(jnp.where(new_m[k], 0, new_params[k]).any())

    train(tx, params, 6, check=check)


@pytest.mark.parametrize(
    "method",
    [gj.snfs(), gj.rigl(signal="mean_abs"), gj.ggr(signal="ema")],
    ids=["snfs", "acc", "ema"],
)
def test_dynamic_sparse_signals_strict_bf16(method):
    # The signals dynamic_sparse keeps are float32; with bf16 gradients that must not rely on an
    # implicit promotion (sgd itself is strict-clean).
    params, masks = model(jnp.bfloat16)
    tx = gj.dynamic_sparse(
        optax.sgd(0.1), masks, key=jax.random.key(3), method=method, update_every=1, end_step=10
    )
    with jax.numpy_dtype_promotion("strict"):
        state = tx.init(params)
        for _ in range(3):
            grads = jax.tree.map(jnp.ones_like, params)
            updates, state = jax.jit(tx.update)(grads, state, params)
            params = optax.apply_updates(params, updates)
    signals = [x for x in jax.tree.leaves((state.signal, state.momentum)) if x.ndim > 0]
    assert signals and all(x.dtype == jnp.float32 for x in signals)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))


def test_drop_fraction_schedule_and_end_step():
    params, masks = model()
    schedule = optax.cosine_decay_schedule(0.5, END_STEP)
    tx = gj.dynamic_sparse(
        optax.sgd(1e-3),
        masks,
        key=jax.random.key(3),
        method=gj.rigl(),
        update_every=2,
        end_step=END_STEP,
        drop_fraction=schedule,
        min_active=0,
    )
    seen = []

    def check(t, params, state, updates, new_params, new_state):
        old_m, new_m = gj.get_masks(state), gj.get_masks(new_state)
        due = t > 0 and t % 2 == 0 and t < END_STEP
        if not due:
            for k in SPARSE:
                np.testing.assert_array_equal(old_m[k], new_m[k])
            return
        f = np.float32(schedule(t))
        for k in SPARSE:
            active = int(old_m[k].sum())
            assert int(new_state.info["dropped"][k]) == int(np.floor(f * np.float32(active)))
        seen.append(t)

    train(tx, params, END_STEP + 4, check=check)
    assert seen == [2, 4, 6, 8]


def test_dynamic_sparse_applies_redistribute_exactly():
    # The topology update runs first, on the params it receives, then the inner optimizer
    # updates the new topology with the same gradients. After step 0 |a| is 3, 0.0625, 1, 2:
    # (0,2) and (1,0) are pruned at step 1, (0,2) (largest gradient) and (1,2) regrown.
    params = {"a": jnp.array([[3.0, 0.0, 0.5], [1.0, 2.0, 0.0]]), "bias": jnp.zeros(3)}
    masks = {"a": params["a"] != 0, "bias": None}
    grads = {"a": jnp.array([[0.0, 1.0, 9.0], [0.0, 0.0, 2.0]]), "bias": jnp.ones(3)}
    inner = optax.sgd(0.0625, momentum=0.5)  # dyadic values: every step is exact arithmetic
    key = jax.random.key(5)
    tx = gj.dynamic_sparse(
        inner,
        masks,
        key=key,
        method=gj.rigl(),
        update_every=1,
        end_step=5,
        drop_fraction=0.5,
        min_active=0,
    )
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(grads, state, params)  # step 0: no topology update
    params = optax.apply_updates(params, updates)
    updates, new_state = jax.jit(tx.update)(grads, state, params)  # step 1: topology update
    new_params = optax.apply_updates(params, updates)
    # the same step by hand: redistribute, reset the inner state, inner step on the new masks
    want_p, want_m, info = gj.redistribute(
        params,
        masks,
        grads,
        jax.random.fold_in(key, 1),
        method=gj.rigl(),
        fraction=0.5,
        min_active=0,
    )
    assert int(info["dropped"]["a"]) == 2 and int(info["grown"]["a"]) == 2
    np.testing.assert_array_equal(want_m["a"], [[True, False, True], [False, True, True]])
    inner_state = gj.reset_optimizer_state(inner, state.inner_state, masks, want_m)
    plain, want_inner = inner.update(gj.apply_masks(grads, want_m), inner_state, want_p)
    want = optax.apply_updates(want_p, gj.apply_masks(plain, want_m))
    np.testing.assert_array_equal(gj.get_masks(new_state)["a"], want_m["a"])
    np.testing.assert_array_equal(new_params["a"], want["a"])
    np.testing.assert_array_equal(new_params["bias"], want["bias"])
    chex.assert_trees_all_equal(new_state.inner_state, want_inner)
    assert int(new_state.info["grown"]["a"]) == 2


def test_accumulated_signal_differs_from_batch():
    # Free position (0,1) had |g| = 10 on steps 0..2 and 0 on step 3; (1,0) (pruned at step 3)
    # has 5 on step 3 only. At the update on step 3 the batch signal regrows (1,0), the mean
    # over the steps since the last update (10 vs 0: steps 0..2) regrows (0,1).
    params = {"a": jnp.array([[3.0, 0.0], [1.0, 2.0]])}
    masks = {"a": params["a"] != 0}
    early = {"a": jnp.array([[0.0, 10.0], [0.0, 0.0]])}
    late = {"a": jnp.array([[0.0, 0.0], [5.0, 0.0]])}
    result = {}
    for signal in ("batch", "mean_abs", "mean"):
        tx = gj.dynamic_sparse(
            optax.sgd(1e-6),
            masks,
            key=jax.random.key(0),
            method=gj.rigl(signal=signal),
            update_every=3,
            end_step=10,
            drop_fraction=0.34,
            min_active=0,
        )
        p, state = params, tx.init(params)
        update = jax.jit(tx.update)
        for t in range(4):
            updates, state = update(early if t < 3 else late, state, p)
            p = optax.apply_updates(p, updates)
        result[signal] = np.asarray(gj.get_masks(state)["a"])
    np.testing.assert_array_equal(result["batch"], [[True, False], [True, True]])
    np.testing.assert_array_equal(result["mean_abs"], [[True, True], [False, True]])
    np.testing.assert_array_equal(result["mean"], [[True, True], [False, True]])


def test_signed_mean_averages_noise_out():
    # Free position (0,1) sees g = +10, -10, +10, -10, +10 (noise: mean 0, mean |g| 10); (1,0),
    # pruned at step 4, sees 1 on every step. The update at step 4 reads steps 0..3 for the
    # accumulated signals: the signed mean (0 vs 1) and the EMA (|-0.181| vs 0.344, before the
    # common bias correction) regrow (1,0); the mean |g| and the batch (|+10| at step 4) regrow
    # (0,1).
    params = {"a": jnp.array([[3.0, 0.0], [1.0, 2.0]])}
    masks = {"a": params["a"] != 0}
    grads = [{"a": jnp.array([[0.0, 10.0 * (-1) ** t], [1.0, 0.0]])} for t in range(5)]
    result = {}
    for signal in ("batch", "mean_abs", "mean", "ema"):
        tx = gj.dynamic_sparse(
            optax.sgd(1e-6),
            masks,
            key=jax.random.key(0),
            method=gj.rigl(signal=signal),
            update_every=4,
            end_step=10,
            drop_fraction=0.34,
            min_active=0,
        )
        p, state = params, tx.init(params)
        update = jax.jit(tx.update)
        for g in grads:
            updates, state = update(g, state, p)
            p = optax.apply_updates(p, updates)
        result[signal] = np.asarray(gj.get_masks(state)["a"])
    for signal in ("mean", "ema"):
        np.testing.assert_array_equal(result[signal], [[True, False], [True, True]], signal)
    for signal in ("batch", "mean_abs"):
        np.testing.assert_array_equal(result[signal], [[True, True], [False, True]], signal)


def test_dynamic_sparse_errors():
    params, masks = model()
    tx = gj.dynamic_sparse(
        optax.sgd(0.1), masks, key=jax.random.key(0), method=gj.ggr(), update_every=2, end_step=10
    )
    state = tx.init(params)
    with pytest.raises(ValueError, match="dynamic_sparse needs params"):
        tx.update(params, state)
    with pytest.raises(ValueError, match="no dynamic_sparse"):
        gj.get_masks(optax.sgd(0.1).init(params))
    with pytest.raises(ValueError, match="end_step must be a non-negative int, got 2.5"):
        gj.dynamic_sparse(
            optax.sgd(0.1),
            masks,
            key=jax.random.key(0),
            method=gj.ggr(),
            update_every=2,
            end_step=2.5,
        )


def test_snfs_momentum_is_the_gradient_ema_across_updates():
    # SNFS's momentum includes the step's gradient before the update reads it, and topology
    # updates leave it as it is: regrowth goes to the largest momentum.
    params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}
    masks = {"w": params["w"] > 8}
    params = gj.apply_masks(params, masks)
    tx = gj.dynamic_sparse(
        optax.sgd(0.0),
        masks,
        key=jax.random.key(0),
        method=gj.snfs(),
        update_every=2,
        end_step=10,
        drop_fraction=0.5,
        min_active=0,
        momentum_decay=0.5,
    )
    update = jax.jit(tx.update)
    grads = {"w": jnp.linspace(2.0, 1.0, 16).reshape(4, 4)}  # inactive ones largest
    state = tx.init(params)
    ema = jnp.zeros((4, 4))
    for _ in range(3):  # step 2: topology update
        _, state = update(grads, state, params)
        ema = 0.5 * ema + 0.5 * grads["w"]
    np.testing.assert_array_equal(state.momentum["w"], ema)
    old, new = masks["w"], gj.get_masks(state)["w"]
    regrown = new & ~old
    assert int(regrown.sum()) == 4
    np.testing.assert_array_equal(np.flatnonzero(regrown), [0, 1, 2, 3])


def test_update_topology_under_cond_is_the_plain_update():
    params, masks = model()
    tx = optax.chain(gj.accumulate_gradients("ema"), gj.mask_gradients(), optax.adam(1e-2))
    grads = jax.tree.map(lambda p: jnp.cos(p * 3.0), params)
    opt_state = tx.update(grads, tx.init(params), params, masks=masks)[1]
    kw = dict(optimizer=tx, method=gj.ggr(signal="ema"), fraction=jnp.float32(0.3))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(due, params, masks, opt_state):
        return gj.update_topology(params, masks, grads, opt_state, jax.random.key(1), due=due, **kw)

    got = step(jnp.bool_(True), params, masks, opt_state)
    want = jax.jit(lambda p, m, s: gj.update_topology(p, m, grads, s, jax.random.key(1), **kw))(
        params, masks, opt_state
    )
    chex.assert_trees_all_equal(got, want)
    assert any(bool((got[1][k] != masks[k]).any()) for k in SPARSE)
    kept = step(jnp.bool_(False), params, masks, opt_state)
    chex.assert_trees_all_equal(kept[:3], (params, masks, opt_state))
    assert not any(bool(x.any()) for x in jax.tree.leaves(kept[3]))


def test_is_update_step_and_gradient_momentum():
    assert [t for t in range(12) if gj.is_update_step(t, 3, 10)] == [3, 6, 9]
    traced = jax.jit(gj.is_update_step, static_argnums=(1, 2))
    assert [t for t in range(12) if bool(traced(jnp.int32(t), 3, 10))] == [3, 6, 9]
    m = gj.gradient_momentum({"w": jnp.ones(2)}, {"w": jnp.array([3.0, -1.0], jnp.bfloat16)})
    assert m["w"].dtype == jnp.float32
    np.testing.assert_allclose(m["w"], [0.9 + 0.1 * 3.0, 0.9 - 0.1])


def test_update_topology_names_the_missing_accumulator():
    params, masks = model()
    tx = optax.chain(gj.mask_gradients(), optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"chain gj.accumulate_gradients\('mean'\) in front"):
        gj.update_topology(
            params,
            masks,
            params,
            tx.init(params),
            jax.random.key(0),
            optimizer=tx,
            method=gj.ggr(signal="mean"),
            fraction=0.3,
        )
