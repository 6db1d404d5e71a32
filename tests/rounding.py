"""How far apart two computations may be when they differ only in how they round.

Two computations of one value that add their terms in another order (another blocking in
a kernel, another number of devices or processes, XLA's ops against the C++ kernels, a
fused op against its parts) give different floating-point results, and which order a
machine takes depends on its vector width and thread count: a tolerance fitted to what one
CPU happened to produce fails on the next. The rule here is derived instead.

A sum of n terms in floating point, in any order, is within gamma(n-1) * sum|terms| of the
exact sum, gamma(k) = k u / (1 - k u), u the unit roundoff (2**-24 for float32, 2**-8 for
bfloat16); a dot product of n products is within gamma(n) (Higham, "Accuracy and Stability
of Numerical Algorithms", 2nd ed., eq. 3.4 and 3.5). So two such sums differ by at most
2 gamma(n) sum|terms|: this is `rounding_bound`.

Where the sum of |terms| is not at hand, the largest |value| of the reference stands in
for it. For terms of mixed sign that scale is smaller than sum|terms| (by about sqrt(n) for
random signs), but the bound's factor n is larger than the typical error's sqrt(n), so the
stand-in is still a bound in practice.

A computation of many dependent sums (a network's forward and backward pass, `steps`
training steps) has no bound this simple; tests take n as the longest sum in it (for a
train step: the examples on a device times the pixels of the largest feature map, the
sum of a weight gradient or a BatchNorm statistic) and multiply by the steps taken, one
rounding difference entering every parameter at each update. That estimate is far below
what a real fault moves (one SGD step at learning rate 0.1 moves a tiny net's arrays by
tens of percent of their size), which `assert_moved_beyond` checks where it matters.

Results that must be the same computation (a resumed run against an uninterrupted one,
the same config twice, a checkpoint's fingerprint) are compared bitwise, not with this.
"""

import numpy as np

FLOAT32_ROUNDOFF = 2.0**-24
BFLOAT16_ROUNDOFF = 2.0**-8


def gamma(terms: int, roundoff: float = FLOAT32_ROUNDOFF) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of n roundings."""
    assert terms * roundoff < 1, 'too many terms for a bound at this precision'
    return terms * roundoff / (1 - terms * roundoff)


def rounding_bound(terms: int, *, steps: int = 1,
                   roundoff: float = FLOAT32_ROUNDOFF) -> float:
    """How far two computations of a sum of `terms` terms, in other orders, may differ,
    relative to the sum of the terms' magnitudes; `steps` such sums in sequence add."""
    return 2 * steps * gamma(terms, roundoff)


def train_step_terms(batch_size: int, devices: int, image_size: int) -> int:
    """The longest sum of a train step: a device's examples times the input's pixels (a
    weight gradient or a BatchNorm statistic of the first layer)."""
    return batch_size // devices * image_size**2


def assert_equal_up_to_rounding(got, want, *, terms: int, steps: int = 1, scale=None,
                                roundoff: float = FLOAT32_ROUNDOFF, err_msg: str = '') -> None:
    """`got` equals `want` within `rounding_bound(terms, steps)` times `scale`.

    scale: the sum of the magnitudes of the terms, elementwise or one number; by default
    the largest |want| (see the module docstring).
    """
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if want.ndim == 0:  # one number for every element, as numpy's assert_allclose takes
        want = np.broadcast_to(want, got.shape)
    assert got.shape == want.shape, f'{err_msg} shapes {got.shape} != {want.shape}'
    if scale is None:
        scale = np.nanmax(np.abs(want), initial=0.0)
    bound = np.broadcast_to(
        rounding_bound(terms, steps=steps, roundoff=roundoff) * np.asarray(scale, np.float64),
        got.shape)
    # NaN on both sides is equal, as in numpy's assert_allclose.
    difference = np.where(np.isnan(got) & np.isnan(want), 0.0, np.abs(got - want))
    outside = ~(difference <= bound)
    if outside.any():
        worst = np.unravel_index(np.argmax(np.where(outside, difference / np.maximum(
            bound, np.finfo(np.float64).tiny), 0.0)), outside.shape)
        raise AssertionError(
            f'{err_msg} {outside.sum()} of {outside.size} elements differ by more than the '
            f'rounding bound of {terms} terms x {steps} step(s) (u = {roundoff:.3g}); the '
            f'worst, at {tuple(int(i) for i in worst)}: {float(got[worst])!r} against '
            f'{float(want[worst])!r}, difference {difference[worst]:.3g}, bound {bound[worst]:.3g}')


def assert_bfloat16_rounding_of(got, want, *, terms: int, scale=None, err_msg: str = '') -> None:
    """`got`, a sum of `terms` products of bfloat16 values accumulated in float32 and rounded
    to bfloat16 once, against `want`, the same sum of the same values in float32 (another
    order, not rounded): within one bfloat16 rounding of |want| (the relative 2u of
    `rounding_bound(1)`) plus the float32 bound of `terms` terms times `scale`."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f'{err_msg} shapes {got.shape} != {want.shape}'
    if scale is None:
        scale = np.nanmax(np.abs(want), initial=0.0)
    bound = (rounding_bound(1, roundoff=BFLOAT16_ROUNDOFF) * np.abs(want)
             + rounding_bound(terms) * scale)
    difference = np.abs(got - want)
    outside = ~(difference <= bound)
    assert not outside.any(), (
        f'{err_msg} {outside.sum()} of {outside.size} elements differ by more than a '
        f'bfloat16 rounding plus the float32 bound of {terms} terms; the worst difference '
        f'{np.max(difference - bound):.3g} beyond its bound')


def assert_moved_beyond(after, before, *, terms: int, steps: int = 1,
                        fraction: float = 0.9) -> None:
    """At least `fraction` of the arrays moved by more than the rounding bound between
    `before` and `after` (dicts of name -> array): a comparison with that bound would
    catch a fault that changed the training at all."""
    moved = [name for name in after
             if np.max(np.abs(after[name] - before[name]))
             > rounding_bound(terms, steps=steps) * np.max(np.abs(after[name]))]
    assert len(moved) >= fraction * len(after), (
        f'only {len(moved)} of {len(after)} arrays moved beyond the rounding bound')
