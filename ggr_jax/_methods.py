"""Dynamic sparse training methods as configurations of one topology update.

GGR, RigL, SET, SNFS and static sparse training are values of :class:`Method`: which stage
functions of :func:`ggr_jax.redistribute` run (prune -> allocate -> place) and with which options.

Reference: Parger et al. 2022, "Gradient-based Weight Density Balancing for Robust Dynamic
Sparse Training", https://arxiv.org/abs/2210.14012
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

# The stage names: keys of ggr_jax._redistribute.ALLOCATE / PLACE ("none": static training).
# A new stage function gets its name here and its entry in that table.
Allocate = Literal["per_layer", "global_gradient", "momentum", "none"]
Place = Literal["gradient", "random", "mixed", "momentum", "none"]
Normalize = Literal["l2", "rms", "mean", "max", "weight"]
Signal = Literal["batch", "mean", "ema", "mean_abs"]
NORMALIZE = (None, *get_args(Normalize))
SIGNAL = get_args(Signal)


class Method(NamedTuple):
    """A dynamic sparse training method as a configuration of prune -> allocate -> place.

    Attributes:
      name: label used in logs.
      allocate: how many connections each layer regrows: ``"per_layer"`` (as many as it
        dropped), ``"global_gradient"`` (GGR: a top-k over all layers' gradients together),
        ``"momentum"`` (SNFS: proportional to the layer's mean |momentum|), ``"none"`` (static
        sparse training: no prune, no regrowth; then ``place`` is ``"none"`` too). A key of
        ``ggr_jax._redistribute.ALLOCATE``.
      place: where they go inside a layer: ``"gradient"`` (largest |g|), ``"random"``,
        ``"mixed"`` (``round(rho * n)`` by gradient, the rest random), ``"momentum"``. A key
        of ``ggr_jax._redistribute.PLACE``.
      rho: share of the regrown connections placed by gradient when ``place == "mixed"``.
      normalize: how GGR's global top-k puts each layer's |g| on one scale (only with
        ``allocate="global_gradient"``); see :func:`ggr`.
      regrow_pruned: whether just-pruned positions may be regrown in the same update (as in
        RigL). When False they are used only if a layer has no other free position left.
      signal: which per-weight gradient signal regrowth reads (the caller provides it:
        :func:`dynamic_sparse` and :func:`accumulate_gradients` do): ``"batch"`` (this batch's
        gradient), ``"mean"`` (the signed mean gradient since the last update), ``"ema"`` (a
        signed exponential moving average of the gradients), ``"mean_abs"`` (the mean |g| since
        the last update). Regrowth ranks by the magnitude of the signal.
      unit_floor: the prune never removes the last active incoming weight of an output unit (the
        last axis: Flax's ``(in, out)`` and ``HWIO`` layouts): each unit keeps its
        largest-magnitude active weight out of the prune.
      nm_group: N:M structured sparsity: ``M``, the size of the groups of consecutive inputs
        (axis -2) whose active counts every update keeps, so that masks from
        :func:`nm_random_masks` stay N:M (:func:`redistribute` then runs
        :func:`nm_redistribute`; ``min_active`` does not apply). Only per-layer allocation
        (``set_()``, ``rigl()``, any ``place``) or static training fits: GGR's and SNFS's
        cross-layer allocations raise. ``None`` (default): unstructured.
    """

    name: str
    allocate: Allocate = "per_layer"
    place: Place = "gradient"
    rho: float = 1.0
    normalize: Normalize | None = None
    regrow_pruned: bool = True
    signal: Signal = "batch"
    unit_floor: bool = False
    nm_group: int | None = None

    @property
    def needs_momentum(self) -> bool:
        return self.allocate == "momentum" or self.place == "momentum"

    @property
    def is_static(self) -> bool:
        return self.allocate == "none"


def static() -> Method:
    """Static sparse training: the masks never change."""
    return Method("static", allocate="none", place="none")


def set_() -> Method:
    """SET: magnitude pruning, per-layer regrowth at random positions.

    Reference: Mocanu et al. 2018, https://arxiv.org/abs/1707.04780
    """
    return Method("set", allocate="per_layer", place="random")


def rigl(*, signal: Signal = "batch") -> Method:
    """RigL: magnitude pruning, per-layer regrowth where |gradient| is largest.

    Reference: Evci et al. 2020, https://arxiv.org/abs/1911.11134
    """
    return Method("rigl", allocate="per_layer", place="gradient", signal=signal)


def snfs() -> Method:
    """SNFS (sparse momentum): regrowth counts by mean |momentum| per layer, placed by |momentum|.

    ``redistribute`` then needs ``momentum=``; :func:`dynamic_sparse` keeps an EMA of gradients.

    Reference: Dettmers & Zettlemoyer 2019, https://arxiv.org/abs/1907.04840
    """
    return Method("snfs", allocate="momentum", place="momentum")


def ggr(
    *,
    rho: float = 1.0,
    normalize: Normalize | None = "l2",
    regrow_pruned: bool = True,
    signal: Signal = "mean",
    unit_floor: bool = False,
) -> Method:
    """GGR: Global Gradient-based Redistribution.

    Each layer drops its smallest-magnitude weights; the number each layer regrows is how many
    of the ``R`` largest scores over the free positions of all layers together fall into it
    (a global top-k); inside a layer ``round(rho * n)`` go where |g| is largest and the rest at
    random (the paper inserts by "a combination of gradient-based and random insertion" without
    fixing the share). The paper leaves open how the scores of different layers are compared,
    which gradient is read and the share ``rho``; the defaults are ours, chosen on validation
    data by a pre-registered rule (docs/results.md, study v2: 12 normalisation x signal variants,
    then rho and the unit floor, LeNet-300-100 on Fashion-MNIST at 98 and 99.5 %): ``"l2"``
    normalisation, the signed ``"mean"`` gradient since the last update, ``rho=1`` (every
    regrown connection by |g|). The signal reads dense gradients at every step (pass it with
    :func:`accumulate_gradients` or let :func:`dynamic_sparse` keep it); ``signal="batch"``
    needs only the gradient of the update step.

    ``normalize`` says what the global top-k compares. Within a layer every choice keeps the
    order of |g|, so only the split between layers changes:

    * ``None``: raw |g|. Assumes gradients of all layers are on one scale; they are not in
      general (a layer with more fan-in or a rescaled parametrisation gets other magnitudes).
    * ``"l2"``: |g| / ||g||_2 of the layer. Every layer gets the same total gradient energy, so
      a layer's entries shrink with sqrt(its size): favours small layers.
    * ``"rms"``: |g| / RMS(g) of the layer. A typical entry of every layer is 1, whatever the
      layer's size or scale: layers compete by the shape of their gradient distribution (a
      layer whose free positions stand out from its own typical gradient grows).
    * ``"mean"``: |g| / mean |g| of the layer (as ``"rms"``, with the L1 scale).
    * ``"max"``: |g| / max |g| of the layer (sensitive to one outlier).
    * ``"weight"``: |g| times the RMS of the layer's active weights: a first-order estimate of
      the loss change when a new connection grows to the size of the layer's weights
      (|dL| ~ |g| * |w|). Invariant to rescaling a layer's weights (w -> c w, g -> g / c).

    Args:
      rho: share of each layer's regrowth placed by |g| (the rest random), in [0, 1].
      normalize: see above.
      regrow_pruned: whether just-pruned positions may regrow in the same update.
      signal: ``"batch"``, ``"mean"``, ``"ema"`` or ``"mean_abs"`` (see :class:`Method`).
      unit_floor: keep at least one active incoming weight per output unit (see
        :class:`Method`).

    Returns:
      The :class:`Method`.

    Reference: Parger et al. 2022, https://arxiv.org/abs/2210.14012

    Example:
      >>> import ggr_jax as gj
      >>> gj.ggr().allocate, gj.ggr().normalize, gj.ggr().signal, gj.ggr().place
      ('global_gradient', 'l2', 'mean', 'gradient')
    """
    return Method(
        "ggr",
        allocate="global_gradient",
        place="mixed" if rho != 1.0 else "gradient",
        rho=rho,
        normalize=normalize,
        regrow_pruned=regrow_pruned,
        signal=signal,
        unit_floor=unit_floor,
    )
