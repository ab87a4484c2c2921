"""The threshold-selection kernel against a sort-based reference, ties included."""

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import ggr_jax as gj
from ggr_jax._counting import _words_ok, count_at_least, count_true, pack_digits
from ggr_jax._select import random_keys, select_per_leaf, tie_word
from ggr_jax._select_reference import top_k_reference

SETTINGS = settings(max_examples=25, deadline=None)


def reference(keys, eligible, k, *, per_leaf):
    """The sort-based reference, flattened per leaf (as the tests compare)."""
    return [m.ravel() for m in top_k_reference(keys, eligible, k, per_leaf=per_leaf)]


def test_order_key_is_monotone():
    normal = np.array([-np.inf, -3e38, -1.0, -1e-30, 0.0, 1e-30, 1.0, 3e38, np.inf], np.float32)
    keys = gj.order_key(jnp.asarray(normal))
    assert keys.dtype == jnp.uint32
    assert np.all(np.diff(np.asarray(keys).astype(np.int64)) > 0)
    # -0.0 and 0.0 are equal; denormals sit between their neighbours (XLA may flush them to 0)
    around_zero = np.array([-1e-30, -1e-45, -0.0, 0.0, 1e-45, 1e-30], np.float32)
    k0 = np.asarray(gj.order_key(jnp.asarray(around_zero))).astype(np.int64)
    assert k0[2] == k0[3]
    assert np.all(np.diff(k0) >= 0) and k0[0] < k0[2] < k0[-1]
    nan_key = int(gj.order_key(jnp.float32(np.nan)))
    assert nan_key > int(keys[-1])  # NaN above +inf (callers reject non-finite input)
    # bf16 input: same order as its float32 value
    b = jnp.asarray([-2.0, 0.5, 3.0], jnp.bfloat16)
    assert np.all(np.diff(np.asarray(gj.order_key(b)).astype(np.int64)) > 0)


def test_all_ties_take_lowest_indices_in_leaf_order():
    keys = [jnp.full((2, 3), 7, jnp.uint32), jnp.full((4,), 7, jnp.uint32)]
    elig = [jnp.ones((2, 3), bool), jnp.ones(4, bool)]
    out = gj.top_k_global(keys, elig, jnp.int32(8))
    np.testing.assert_array_equal(out[0], np.ones((2, 3), bool))
    np.testing.assert_array_equal(out[1], [True, True, False, False])
    out = gj.top_k_per_leaf(keys, elig, jnp.array([4, 1], jnp.int32))
    np.testing.assert_array_equal(out[0], [[True, True, True], [True, False, False]])
    np.testing.assert_array_equal(out[1], [True, False, False, False])


def test_extreme_keys_and_counts():
    top = np.uint32(0xFFFFFFFF)
    keys = [jnp.array([top, 0, top, 5], jnp.uint32)]
    elig = [jnp.array([True, True, True, False])]
    for k, want in [
        (0, [0, 0, 0, 0]),
        (1, [1, 0, 0, 0]),
        (2, [1, 0, 1, 0]),
        (3, [1, 1, 1, 0]),
        (99, [1, 1, 1, 0]),
        (-3, [0, 0, 0, 0]),
    ]:
        np.testing.assert_array_equal(
            gj.top_k_global(keys, elig, jnp.int32(k))[0], np.array(want, bool), err_msg=f"k={k}"
        )
    nothing = gj.top_k_per_leaf(keys, [jnp.zeros(4, bool)], jnp.array([2], jnp.int32))
    assert not bool(nothing[0].any())
    assert gj.top_k_global([], [], jnp.int32(3)) == []


def test_traced_k_does_not_retrace():
    rng = np.random.default_rng(0)
    keys = [gj.order_key(jnp.asarray(rng.normal(size=s), jnp.float32)) for s in [(5, 4), (3,)]]
    elig = [jnp.asarray(rng.random(s) < 0.7) for s in [(5, 4), (3,)]]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def select(k):
        return gj.top_k_global(keys, elig, k)

    for k in [0, 3, 7, 50]:
        got = select(jnp.int32(k))
        want = reference(keys, elig, k, per_leaf=False)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(np.asarray(g).ravel(), w)


# --- property: equal to the sort-based reference ----------------------------------------------

# (4, 3), (8, 3) and (2, 12, 5) have rows in fours: their digits are counted four to a word
SHAPE_MENU = [[(6, 5)], [(4, 3), (7,), (2, 2, 3)], [(1, 1), (33,)], [(8, 3), (2, 12, 5)]]
_GLOBAL = jax.jit(gj.top_k_global)
_PER_LEAF = jax.jit(gj.top_k_per_leaf)


@st.composite
def selection_problems(draw):
    shapes = draw(st.sampled_from(SHAPE_MENU))
    kind = draw(st.sampled_from(["small_ints", "floats", "raw_uint32"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    keys, elig = [], []
    for s in shapes:
        if kind == "small_ints":  # many ties
            vals = rng.integers(-2, 3, size=s).astype(np.float32)
            keys.append(gj.order_key(jnp.asarray(vals)))
        elif kind == "floats":
            keys.append(gj.order_key(jnp.asarray(rng.normal(size=s), jnp.float32)))
        else:  # the whole uint32 range, including both ends
            raw = rng.integers(0, 2**32, size=s, dtype=np.uint64)
            raw[rng.random(s) < 0.2] = 2**32 - 1
            raw[rng.random(s) < 0.2] = 0
            keys.append(jnp.asarray(raw.astype(np.uint32)))
        elig.append(jnp.asarray(rng.random(s) < draw(st.sampled_from([0.0, 0.5, 1.0]))))
    return keys, elig


def counts(n):
    """k in [-2, n + 2], with the edges 0 and n drawn often."""
    return st.one_of(st.sampled_from([0, n]), st.integers(-2, n + 2))


@SETTINGS
@given(problem=selection_problems(), data=st.data())
def test_top_k_global_equals_reference(problem, data):
    keys, elig = problem
    n = sum(int(np.size(x)) for x in keys)
    k = data.draw(counts(n))
    got = _GLOBAL(keys, elig, jnp.int32(k))
    want = reference(keys, elig, k, per_leaf=False)
    for g, w, x in zip(got, want, keys, strict=True):
        assert g.dtype == jnp.bool_ and g.shape == x.shape
        np.testing.assert_array_equal(np.asarray(g).ravel(), w)


@SETTINGS
@given(problem=selection_problems(), data=st.data())
def test_top_k_per_leaf_equals_reference(problem, data):
    keys, elig = problem
    k = np.array([data.draw(counts(int(np.size(x)))) for x in keys], np.int32)
    got = _PER_LEAF(keys, elig, jnp.asarray(k))
    want = reference(keys, elig, k, per_leaf=True)
    for g, w, x in zip(got, want, keys, strict=True):
        assert g.dtype == jnp.bool_ and g.shape == x.shape
        np.testing.assert_array_equal(np.asarray(g).ravel(), w)


# --- random placement: interpolation search on uniformly random keys --------------------------

_UNIFORM = jax.jit(
    lambda keys, elig, k: select_per_leaf(
        [(lambda x: x, (x,)) for x in keys], elig, k, interpolate=True
    )
)


@SETTINGS
@given(problem=selection_problems(), data=st.data())
def test_uniform_search_equals_reference_on_any_keys(problem, data):
    # tuned for uniform keys, exact for all: ties, both ends of the range, empty eligibility
    keys, elig = problem
    k = np.array([data.draw(counts(int(np.size(x)))) for x in keys], np.int32)
    got, n = _UNIFORM(keys, elig, jnp.asarray(k))
    want = reference(keys, elig, k, per_leaf=True)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(g).ravel(), w)
    np.testing.assert_array_equal(n, [w.sum() for w in want])


@pytest.mark.parametrize("k", [0, 1, 777, 30_000, 53_999, 54_000])
def test_random_keys_selection_is_exact_and_unbiased(k):
    shape = (300, 200)
    keys = random_keys(jax.random.key(3), shape)
    assert len(np.unique(np.asarray(keys))) == keys.size  # a bijection of the flat index
    elig = jnp.asarray(np.random.default_rng(0).random(shape) < 0.9)
    n_elig = int(elig.sum())
    got, n = _UNIFORM([keys], [elig], jnp.asarray([k], jnp.int32))
    want = reference([keys], [elig], [k], per_leaf=True)[0]
    np.testing.assert_array_equal(np.asarray(got[0]).ravel(), want)
    assert int(n[0]) == min(k, n_elig) and not bool((got[0] & ~elig).any())
    if 100 < k < n_elig - 100:  # spread evenly: each row's share within 6 sigma of binomial
        per_row = np.asarray(elig).sum(1)
        share = np.asarray(got[0]).sum(1) / per_row
        p = k / n_elig
        assert np.all(np.abs(share - p) < 6 * np.sqrt(p * (1 - p) / per_row))


def test_random_keys_with_ties_at_zero():
    # regrow_pruned=False gives just-pruned positions key 0 (last resort): many ties
    keys = random_keys(jax.random.key(5), (40, 30))
    tied = jnp.asarray(np.random.default_rng(1).random((40, 30)) < 0.5)
    keys = jnp.where(tied, jnp.uint32(0), keys)
    elig = jnp.ones((40, 30), bool)
    k = jnp.asarray([int((~tied).sum()) + 17], jnp.int32)
    got, _ = _UNIFORM([keys], [elig], k)
    np.testing.assert_array_equal(
        np.asarray(got[0]).ravel(), reference([keys], [elig], np.asarray(k), per_leaf=True)[0]
    )


def test_tie_word_is_distinct_decreasing_and_below_the_top():
    for shape in [(1,), (2,), (3, 5), (256,), (257,), (7, 300, 3)]:
        words = np.asarray(tie_word(shape)).ravel().astype(np.int64)
        assert np.all(np.diff(words) < 0), shape  # lower flat index: larger word
        assert words[0] <= 2**32 - 2  # 2**32 - 1 is left for "no tie taken"


@pytest.mark.parametrize("k", [1, 2, 50_001, 89_999])
def test_ties_in_a_large_leaf_take_lowest_indices(k):
    # 90,000 entries: the tie word is searched over three bytes
    shape = (300, 300)
    keys = [jnp.zeros(shape, jnp.uint32), jnp.zeros((5,), jnp.uint32)]
    elig = [jnp.asarray(np.random.default_rng(2).random(shape) < 0.999), jnp.ones(5, bool)]
    got = _GLOBAL(keys, elig, jnp.int32(k))
    for g, w in zip(got, reference(keys, elig, k, per_leaf=False), strict=True):
        np.testing.assert_array_equal(np.asarray(g).ravel(), w)
    got, n = _UNIFORM(keys, elig, jnp.asarray([k, 3], jnp.int32))
    want = reference(keys, elig, [k, 3], per_leaf=True)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(g).ravel(), w)
    np.testing.assert_array_equal(n, [w.sum() for w in want])


def test_global_ties_are_shared_in_leaf_order():
    # t = 5 is tied in all three leaves; the middle leaf takes part of its ties
    keys = [
        jnp.array([9, 5, 5], jnp.uint32),
        jnp.array([[5, 1], [5, 5]], jnp.uint32),
        jnp.array([5, 8], jnp.uint32),
    ]
    elig = [jnp.ones(3, bool), jnp.array([[True, True], [False, True]]), jnp.ones(2, bool)]
    for k in range(9):
        got = _GLOBAL(keys, elig, jnp.int32(k))
        for g, w in zip(got, reference(keys, elig, k, per_leaf=False), strict=True):
            np.testing.assert_array_equal(np.asarray(g).ravel(), w, err_msg=f"k={k}")


@SETTINGS
@given(
    shape=st.sampled_from([(4, 3), (8, 1), (12, 7), (3, 3, 16, 8), (784, 16), (6, 5), (9,)]),
    t=st.integers(0, 255),
    seed=st.integers(0, 2**32 - 1),
)
def test_counting_four_digits_to_a_word_is_exact(shape, t, seed):
    rng = np.random.default_rng(seed)
    d = rng.integers(0, 256, size=shape).astype(np.uint8)
    d[rng.random(shape) < 0.3] = t  # entries equal to the threshold
    packed = jax.jit(pack_digits)(jnp.asarray(d))
    assert packed.dtype == (jnp.uint32 if _words_ok(shape) else jnp.uint8)
    got = jax.jit(count_at_least)(packed, jnp.uint8(t))
    assert int(got) == int(np.sum(d >= t)) == int(count_true(jnp.asarray(d) >= t))


def test_a_word_holds_four_consecutive_rows():
    d = np.arange(8 * 3, dtype=np.uint8).reshape(8, 3)
    words = np.asarray(pack_digits(jnp.asarray(d)))
    assert words.shape == (2, 3) and words.dtype == np.uint32
    for i in range(2):
        for j in range(4):
            np.testing.assert_array_equal((words[i] >> (8 * j)) & 0xFF, d[4 * i + j])
    assert not _words_ok((32, 32, 60, 4))  # a byte of a partial count would pass 255


def test_groups_of_leaves_select_like_a_global_selection_per_group():
    """The general grouping (several multi-leaf groups: segment sums, per-group tie shares)."""
    from ggr_jax._select import _const, _groups, _select

    rng = np.random.default_rng(3)
    shapes = [(4, 3), (5,), (2, 2), (8, 2), (3,)]
    keys = [gj.order_key(jnp.asarray(rng.integers(-2, 3, size=s), jnp.float32)) for s in shapes]
    elig = [jnp.asarray(rng.random(s) < 0.8) for s in shapes]
    members = [[0, 1], [2], [3, 4]]
    for k in ([0, 0, 0], [5, 1, 7], [17, 4, 19], [3, 2, 100]):
        got, counts = jax.jit(
            lambda k: _select([_const(x) for x in keys], elig, k, _groups(members))
        )(jnp.asarray(k, jnp.int32))
        for g, m in enumerate(members):
            want = gj.top_k_global([keys[i] for i in m], [elig[i] for i in m], jnp.int32(k[g]))
            for i, w in zip(m, want, strict=True):
                np.testing.assert_array_equal(np.asarray(got[i]), np.asarray(w))
                assert int(counts[i]) == int(np.sum(np.asarray(w)))
    with pytest.raises(AssertionError, match="consecutive"):
        _groups([[1], [0]])
