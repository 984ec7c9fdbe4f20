"""The paper-literal reference: independent oracle, certificates, closed forms."""

import pytest
import torch
from helpers import make_grads, rel_err, slsqp_dual

from camegrad_kernels import reference, solver

KINDS = ["random", "conflicting", "correlated"]


@pytest.mark.parametrize("n", [2, 3, 4, 8, 16, 40])
@pytest.mark.parametrize("kind", KINDS)
def test_dual_beats_slsqp_oracle_and_closes_the_gap(n, kind):
    g = make_grads(kind, n, 97, torch.float64, seed=n)
    _, info = reference.camegrad_step(g, return_info=True)
    assert info.duality_gap <= reference.REFERENCE_GAP
    M = (g @ g.T).numpy()
    _, f_oracle = slsqp_dual(M, 0.5)
    b = torch.from_numpy(M.mean(axis=1))
    s = 0.5 * info.mu.norm()
    f_ours = float(info.alpha @ b + s * info.g_alpha.norm())
    # Our optimum is never worse than SLSQP's (which stops at ~1e-10 relative).
    assert f_ours <= f_oracle + 1e-9 * abs(f_oracle) + 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_worst_task_does_at_least_as_well_as_under_the_mean(kind):
    g = make_grads(kind, 5, 64, torch.float64)
    _, info = reference.camegrad_step(g, return_info=True)
    tol = 1e-9 * g.norm(dim=1).max() ** 2
    assert (g @ info.u_rect).min() >= (g @ info.mu).min() - tol
    # u_rect sits on the trust-region boundary ||u - mu|| = rho ||mu||.
    assert torch.isclose((info.u_rect - info.mu).norm(), 0.5 * info.mu.norm(), rtol=1e-9)


def test_single_task_is_kappa_w_g():
    g = make_grads("random", 1, 33, torch.float64)
    out = reference.camegrad_step(g, [2.0])
    assert rel_err(out, 1.5 * 2.0 * g[0]) < 1e-8


def test_equal_tasks_give_kappa_sum_w_g():
    g = make_grads("random", 1, 33, torch.float64).expand(4, 33).contiguous()
    w = [1.0, 0.5, 2.0, 0.25]
    assert rel_err(reference.camegrad_step(g, w), 1.5 * sum(w) * g[0]) < 1e-8


def test_permutation_and_scaling_invariance():
    g = make_grads("conflicting", 6, 50, torch.float64)
    w = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 0.1], dtype=torch.float64)
    base, info = reference.camegrad_step(g, w, eps=0.0, return_info=True)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert rel_err(reference.camegrad_step(g[perm], w[perm], eps=0.0), base) < 1e-9
    scaled, info2 = reference.camegrad_step(7.5 * g, w, eps=0.0, return_info=True)
    assert rel_err(scaled, 7.5 * base) < 1e-9
    assert torch.allclose(info2.alpha, info.alpha, atol=1e-8)


def test_ablations_match_the_design_note():
    g = make_grads("conflicting", 4, 40, torch.float64)
    w = torch.tensor([1.0, 0.5, 0.5, 2.0], dtype=torch.float64)
    joint = w @ g
    _, info = reference.camegrad_step(g, w, return_info=True)
    # Linear scalarization: no stage at all is c = w.
    assert rel_err(reference.camegrad_step(g, w, stages=()), joint) < 1e-12
    # CAGrad: Stage 1 alone is u_rect.
    assert rel_err(reference.camegrad_step(g, w, stages=("rectify",)), info.u_rect) < 1e-12
    # No S3: nu = 0.
    assert rel_err(reference.camegrad_step(g, w, stages=("rectify", "rescale")), info.u_en) < 1e-12
    # No S2: the fused joint term is nu * g_joint (kappa belongs to Stage 2).
    no_s2 = reference.camegrad_step(g, w, stages=("rectify", "fuse"))
    assert rel_err(no_s2, 0.8 * info.u_rect + 0.2 * joint) < 1e-12
    # No S1: u = g_joint, rescaled to kappa ||g_joint||, fused with kappa g_joint.
    no_s1 = reference.camegrad_step(g, w, stages=("rescale", "fuse"))
    assert rel_err(no_s1, 1.5 * joint) < 1e-8


def test_opposing_gradients_keep_the_mean():
    g = make_grads("opposing", 2, 20, torch.float64)
    _, info = reference.camegrad_step(g, return_info=True)
    assert torch.equal(info.u_rect, info.mu)


def test_rank_deficient_gram_more_tasks_than_parameters():
    g = make_grads("random", 12, 5, torch.float64)
    out, info = reference.camegrad_step(g, return_info=True)
    assert torch.isfinite(out).all()
    assert info.duality_gap <= reference.REFERENCE_GAP


def test_smoothing_tracks_the_dtype():
    """gamma follows the Gram's precision, and the work dtype's below it."""
    assert solver.smoothing(torch.float32) > solver.smoothing(torch.float64) > 0
    assert solver.smoothing(torch.float64, torch.float32) > solver.smoothing(torch.float64)
