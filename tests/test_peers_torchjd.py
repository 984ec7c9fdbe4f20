"""CAGrad and MGDA against TorchJD's aggregators, an independent implementation.

Conventions (TorchJD 0.18): ``CAGrad(c, norm_eps)`` solves CAGrad's dual with
cvxpy/Clarabel on the normalised Gramian and returns the un-rescaled u, which is
our ``method="cagrad"`` with ``rescale=0``; ``norm_eps=0`` turns off its "return
0 under a norm threshold" rule. Its Clarabel call uses default tolerances
(~1e-8); the fixture below tightens them so that the comparison tests our
solver rather than theirs. ``MGDA(epsilon, max_iters)`` is Frank-Wolfe on the
min-norm problem; its answer is checked against ours by the min-norm inequality. Where the two differ, the
primal value (CAGrad) or the norm (MGDA) says which is closer to the optimum.
"""

import pytest
import torch
from test_dynamic_range import spread_grads

import camegrad_kernels as ck

aggregation = pytest.importorskip("torchjd.aggregation")
cp = pytest.importorskip("cvxpy")

GEOMETRIES = [(n, ratio) for n in (2, 3, 4, 8) for ratio in (1.0, 1e2, 1e4, 1e6)]


@pytest.fixture
def tight_clarabel(monkeypatch):
    solve = cp.Problem.solve

    def tight(self, *args, **kwargs):
        kwargs.update(tol_gap_abs=1e-14, tol_gap_rel=1e-14, tol_feas=1e-14, max_iter=500)
        return solve(self, *args, **kwargs)

    monkeypatch.setattr(cp.Problem, "solve", tight)


@pytest.mark.parametrize("n,ratio", GEOMETRIES)
def test_cagrad_matches_torchjd(n, ratio, tight_clarabel):
    g = spread_grads(n, 64, ratio, torch.float64, seed=n)
    ours = ck.camegrad_step(g, method="cagrad", method_options={"rescale": 0}, backend="cpu")
    theirs = aggregation.CAGrad(c=0.5, norm_eps=0.0)(g)
    assert float((ours - theirs).norm() / theirs.norm()) <= 1e-4
    # Both directions lie on the ball of Eq. 8; ours reaches at least their worst-task value.
    scale = float(g.mean(0).norm() * g.norm(dim=1).max())
    assert float((g @ ours).min() - (g @ theirs).min()) / scale >= -1e-10


@pytest.mark.parametrize("n,ratio", GEOMETRIES)
def test_mgda_matches_torchjd(n, ratio):
    g = spread_grads(n, 64, ratio, torch.float64, seed=n + 50)
    ours = ck.camegrad_step(g, method="mgda", backend="cpu")
    theirs = aggregation.MGDA(epsilon=1e-12, max_iters=2_000)(g)
    # For the min-norm point x* of a convex set and any y in it (TorchJD's answer is
    # one), ||y - x*||^2 <= ||y||^2 - ||x*||^2: exact, whether Frank-Wolfe converged or not.
    t2, o2 = float(theirs.norm()) ** 2, float(ours.norm()) ** 2
    assert o2 <= t2 * (1 + 1e-9)
    assert float((ours - theirs).norm()) ** 2 <= t2 - o2 + 1e-9 * t2
