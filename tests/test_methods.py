"""The baseline methods (camegrad_kernels/methods/), method= in the API, the CAME_Grad wrapper, the presets."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import make_grads, slsqp_dual

import camegrad_kernels as ck
from camegrad_kernels import backends, methods

F64 = torch.float64
KINDS = ("random", "conflicting", "correlated", "collinear", "opposing")


def _gram(kind: str, n: int, d: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    G = make_grads(kind, n, d, F64, seed=seed)
    return G, G @ G.T


# --------------------------------------------------------------------------- MGDA


@pytest.mark.parametrize("normalization", ["none", "l2"])
@pytest.mark.parametrize("n", [2, 5, 16])
@pytest.mark.parametrize("kind", KINDS)
def test_mgda_kkt(kind, n, normalization):
    """alpha is the min-norm point of the hull: (M a)_i >= a^T M a, equality on the support."""
    G, M = _gram(kind, n, seed=n)
    alpha, coeffs, gap, skipped = methods.mgda_coefficients(M, torch.ones(n, dtype=F64), normalization)
    assert not skipped
    assert (alpha >= 0).all() and abs(float(alpha.sum()) - 1.0) < 1e-12
    norms = G.norm(dim=1)
    Gn = G / norms[:, None] if normalization == "l2" else G
    Mn = Gn @ Gn.T
    Ma, q, scale = Mn @ alpha, alpha @ Mn @ alpha, Mn.diagonal().max()
    assert float(((q - Ma) / scale).max()) <= 1e-9  # no vertex does better
    support = alpha > 1e-7
    assert float(((Ma[support] - q).abs() / scale).max()) <= 1e-9
    assert 0 <= float(gap) <= 1e-9
    # c = alpha un-normalised back to the raw gradients
    torch.testing.assert_close(coeffs @ G, alpha @ Gn, rtol=1e-12, atol=1e-12 * float(norms.max()))


def test_mgda_two_tasks_closed_form():
    G, M = _gram("random", 2, seed=3)
    g1, g2 = G
    t = float(((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2))).clamp(0, 1))
    alpha, *_ = methods.mgda_coefficients(M, torch.ones(2, dtype=F64))
    torch.testing.assert_close(alpha, torch.tensor([t, 1 - t], dtype=F64), rtol=0, atol=1e-10)


def test_mgda_scale_free():
    _, M = _gram("conflicting", 5)
    a1, *_ = methods.mgda_coefficients(M, torch.ones(5, dtype=F64))
    for lam in (1e-20, 1e15):
        a2, *_ = methods.mgda_coefficients(M * lam * lam, torch.ones(5, dtype=F64))
        torch.testing.assert_close(a2, a1, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- PCGrad


def _pcgrad_vector(H: torch.Tensor, order: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """PCGrad (Yu et al. 2020, Algorithm 1) on the vectors, float64, in the given orders."""
    n = H.shape[0]
    out = []
    for i in range(n):
        g = H[i].clone()
        for j in order[i].tolist():
            if j == i:
                continue
            dot = g @ H[j]
            if dot < 0:
                g = g - dot / (H[j] @ H[j]) * H[j]
        out.append(g)
    total = torch.stack(out).sum(0)
    return total / n if reduction == "mean" else total


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("n", [2, 3, 6, 10])
@pytest.mark.parametrize("kind", ["random", "conflicting", "correlated", "opposing"])
def test_pcgrad_matches_vector_space(kind, n, reduction):
    G, M = _gram(kind, n, seed=n)
    w = torch.rand(n, generator=torch.Generator().manual_seed(n), dtype=F64) + 0.2
    order = methods.pcgrad_order(n, seed=11 + n)
    alpha, coeffs, gap, skipped = methods.pcgrad_coefficients(M, w, order, reduction)
    expect = _pcgrad_vector(w[:, None] * G, order, reduction)
    scale = float((w[:, None] * G).norm(dim=1).sum())
    assert float((coeffs @ G - expect).norm()) <= 1e-12 * scale
    assert torch.isnan(alpha).all() and torch.isnan(gap) and not skipped


def test_pcgrad_order_reproducible():
    assert torch.equal(methods.pcgrad_order(7, 3), methods.pcgrad_order(7, 3))
    assert not torch.equal(methods.pcgrad_order(7, 3), methods.pcgrad_order(7, 4))
    torch.manual_seed(5)
    a = methods.pcgrad_order(7)
    torch.manual_seed(5)
    assert torch.equal(a, methods.pcgrad_order(7))
    for row in methods.pcgrad_order(9, 0):
        assert sorted(row.tolist()) == list(range(9))
    G = make_grads("conflicting", 5, 40)
    u1 = ck.camegrad_step(G, method="pcgrad", method_options={"seed": 2})
    u2 = ck.camegrad_step(G, method="pcgrad", method_options={"seed": 2})
    assert torch.equal(u1, u2)


# --------------------------------------------------------------------------- CAGrad


def _cagrad_public(G: np.ndarray, c: float, rescale: int) -> np.ndarray:
    """CAGrad's public code (grads as rows), its SciPy SLSQP dual, without the 1e-8 guards."""
    GG = G @ G.T
    x, _ = slsqp_dual(GG, c)
    g0 = G.mean(0)
    gw = x @ G
    g = g0 + c * np.linalg.norm(g0) / np.linalg.norm(gw) * gw
    return {0: g, 1: g / (1 + c**2), 2: g / (1 + c)}[rescale]


@pytest.mark.parametrize("rescale", [0, 1, 2])
@pytest.mark.parametrize("rho", [0.2, 0.5, 0.9])
@pytest.mark.parametrize("kind,n", [("random", 3), ("conflicting", 4), ("correlated", 6), ("random", 8)])
def test_cagrad_matches_public_code(kind, n, rho, rescale):
    G, M = _gram(kind, n, seed=n)
    alpha, coeffs, gap, skipped = methods.cagrad_coefficients(M, torch.ones(n, dtype=F64), rho, rescale)
    expect = _cagrad_public(G.numpy(), rho, rescale)
    got = (coeffs @ G).numpy()
    assert np.linalg.norm(got - expect) <= 1e-5 * np.linalg.norm(expect)
    assert float(gap) <= 1e-9 and not skipped
    # Our dual is at least as good as SLSQP's.
    b = M.mean(1)
    s = rho * float(b.mean().sqrt())
    _, f_slsqp = slsqp_dual(M.numpy(), rho)
    f_ours = float(alpha @ b + s * (alpha @ M @ alpha).sqrt())
    assert f_ours <= f_slsqp + 1e-12 * float(M.diagonal().max())


def test_cagrad_is_camegrad_stage1():
    G = make_grads("conflicting", 4, 30, F64)
    u = ck.camegrad_step(G, method="cagrad", rho=0.4, method_options={"rescale": 0})
    ref = ck.reference.camegrad_step(G, rho=0.4, stages=("rectify",))
    torch.testing.assert_close(u, ref, rtol=1e-10, atol=0)


# --------------------------------------------------------------------------- linear


def test_linear_is_weighted_sum():
    G = make_grads("random", 5, 50, F64)
    w = [1.0, 0.5, 0.0, 2.0, 0.25]
    u = ck.camegrad_step(G, w, method="linear")
    torch.testing.assert_close(u, torch.tensor(w, dtype=F64) @ G, rtol=1e-14, atol=0)
    info = ck.camegrad_coefficients(G @ G.T, w, method="linear")
    torch.testing.assert_close(info.coeffs, torch.tensor(w, dtype=F64))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "method,options,error,match",
    [
        ("sgd", None, ValueError, "method: expected one of"),
        (None, None, ValueError, "method: expected one of"),
        ("camegrad", {"rescale": 1}, ValueError, "not accepted by method 'camegrad'"),
        ("cagrad", {"normalization": "l2"}, ValueError, "not accepted by method 'cagrad'"),
        ("cagrad", {"rescale": 3}, ValueError, r"method_options\['rescale'\]"),
        ("cagrad", {"rescale": True}, ValueError, r"method_options\['rescale'\]"),
        ("mgda", {"normalization": "loss"}, ValueError, "needs the loss values"),
        ("mgda", {"normalization": "l1"}, ValueError, r"method_options\['normalization'\]"),
        ("pcgrad", {"seed": "x"}, TypeError, r"method_options\['seed'\]"),
        ("pcgrad", {"reduction": "max"}, ValueError, r"method_options\['reduction'\]"),
        ("linear", [("seed", 1)], TypeError, "method_options: expected a dict"),
    ],
)
def test_method_validation(method, options, error, match):
    G = make_grads("random", 3, 10)
    with pytest.raises(error, match=match):
        ck.camegrad_step(G, method=method, method_options=options)
    with pytest.raises(error, match=match):
        ck.camegrad_coefficients(G @ G.T, method=method, method_options=options)


# --------------------------------------------------------------------------- CAME_Grad wrapper


class TwoTask(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 8))
        self.lm_head = torch.nn.Linear(8, 5)
        self.cls_head = torch.nn.Linear(8, 3)
        self.frozen = torch.nn.Linear(8, 8)
        self.frozen.requires_grad_(False)

    def forward(self, x, y_lm, y_cls):
        h = torch.tanh(self.encoder(x))
        h = h + 0.1 * self.frozen(h)
        loss_lm = torch.nn.functional.mse_loss(self.lm_head(h), y_lm)
        loss_cls = torch.nn.functional.cross_entropy(self.cls_head(h), y_cls)
        return loss_lm, loss_cls


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(7, 6, generator=g), torch.randn(7, 5, generator=g), torch.randint(0, 3, (7,), generator=g)


def _manual_step(model: TwoTask, batch, weights, lr: float, hyper: dict) -> None:
    """What the wrapper must do, written out: per-task grads, reference step, plain SGD."""
    losses = model(*batch)
    shared = list(model.encoder.parameters())
    heads = list(model.lm_head.parameters()) + list(model.cls_head.parameters())
    rows, head_grads = [], [torch.zeros_like(p) for p in heads]
    for loss, w in zip(losses, weights):
        gs = torch.autograd.grad(loss, shared + heads, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([g.reshape(-1) for g in gs[: len(shared)]]))
        for k, g in enumerate(gs[len(shared):]):
            if g is not None:
                head_grads[k] += w * g
    update = ck.reference.camegrad_step(torch.stack(rows), weights, **hyper)
    with torch.no_grad():
        offset = 0
        for p in shared:
            p -= lr * update[offset : offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
        for p, g in zip(heads, head_grads):
            p -= lr * g


@pytest.mark.parametrize("explicit_shared", [False, True])
def test_came_grad_wrapper_matches_manual_step(explicit_shared):
    torch.manual_seed(0)
    model = TwoTask().double()
    twin = copy.deepcopy(model)
    hyper = {"rho": 0.3, "kappa": 1.5, "nu": 0.4}
    shared = model.encoder.parameters() if explicit_shared else None
    opt = ck.CAME_Grad(torch.optim.SGD(model.parameters(), lr=0.05), **hyper, shared_params=shared)
    for it, w in enumerate([0.5, 0.5, 2.0]):
        batch = tuple(t.double() if t.is_floating_point() else t for t in _batch(it))
        loss_lm, loss_cls = model(*batch)
        info = opt.step([loss_lm, loss_cls], task_weights=[1.0, w])
        _manual_step(twin, batch, [1.0, w], 0.05, hyper)
        assert isinstance(info, ck.TrainStepInfo) and info.coeffs.shape == (2,)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_came_grad_constructor_weights_are_the_default():
    torch.manual_seed(0)
    model = TwoTask().double()
    twin = copy.deepcopy(model)
    hyper = {"rho": 0.5, "kappa": 1.5, "nu": 0.2}
    opt = ck.CAME_Grad(
        torch.optim.SGD(model.parameters(), lr=0.05), **hyper,
        shared_params=model.encoder.parameters(), weights=[1.0, 0.25], stages=iter(ck.api.DEFAULT_STAGES),
    )
    batch = tuple(t.double() if t.is_floating_point() else t for t in _batch(0))
    opt.step(list(model(*batch)))  # no task_weights: the constructor's apply
    _manual_step(twin, batch, [1.0, 0.25], 0.05, hyper)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_camegrad_accepts_a_one_shot_stages_iterator():
    cg = ck.CAMEGrad([torch.nn.Parameter(torch.randn(3))], stages=(s for s in ["rectify"]))
    assert cg.stages == ("rectify",)


def test_came_grad_detects_shared_params():
    torch.manual_seed(0)
    model = TwoTask()
    extra = torch.nn.Parameter(torch.zeros(3))  # in the optimizer, reached by no loss
    opt = ck.CAME_Grad(torch.optim.SGD([*model.parameters(), extra], lr=0.01))
    assert opt.shared_params is None
    opt.step(list(model(*_batch(0))))
    assert [id(p) for p in opt.shared_params] == [id(p) for p in model.encoder.parameters()]
    first = opt.camegrad
    opt.step(list(model(*_batch(1))), task_weights=[1.0, 0.3])
    assert opt.camegrad is first  # detected once

    # No parameter shared by two tasks: a clear error.
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    lonely = ck.CAME_Grad(torch.optim.SGD([a, b], lr=0.1))
    with pytest.raises(ValueError, match="more than one task"):
        lonely.step([a.sum(), (b * b).sum()])


def test_came_grad_state_dict_round_trip():
    torch.manual_seed(0)
    model = TwoTask()
    opt = ck.CAME_Grad(torch.optim.Adam(model.parameters(), lr=1e-2), shared_params=model.encoder.parameters())
    for it in range(2):
        opt.step(list(model(*_batch(it))), task_weights=[1.0, 0.7])
    twin = copy.deepcopy(model)
    opt2 = ck.CAME_Grad(torch.optim.Adam(twin.parameters(), lr=1e-2), shared_params=twin.encoder.parameters())
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt2.param_groups[0]["lr"] == 1e-2 and len(opt2.state) == len(opt.state)
    opt.step(list(model(*_batch(5))), task_weights=[1.0, 0.7])
    opt2.step(list(twin(*_batch(5))), task_weights=[1.0, 0.7])
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)
    opt.zero_grad()
    assert all(p.grad is None for p in model.lm_head.parameters())


def test_came_grad_validation():
    model = TwoTask()
    with pytest.raises(TypeError, match="optimizer"):
        ck.CAME_Grad(model.parameters())
    with pytest.raises(ValueError, match="nu"):
        ck.CAME_Grad(torch.optim.SGD(model.parameters(), lr=0.1), nu=2.0)
    opt = ck.CAME_Grad(torch.optim.SGD(model.parameters(), lr=0.1))
    opt.step(list(model(*_batch(0))))
    with pytest.raises(ValueError, match="expected 2 weights"):
        opt.step(list(model(*_batch(1))), task_weights=[1.0, 1.0, 1.0])


@pytest.mark.parametrize("method,options", [("pcgrad", {"seed": 5}), ("mgda", None), ("cagrad", None)])
def test_came_grad_wrapper_passes_method(method, options):
    torch.manual_seed(0)
    model = TwoTask().double()
    opt = ck.CAME_Grad(
        torch.optim.SGD(model.parameters(), lr=0.05), rho=0.3,
        shared_params=model.encoder.parameters(), method=method, method_options=options,
    )
    assert opt.camegrad.method == method
    batch = tuple(t.double() if t.is_floating_point() else t for t in _batch(0))
    info = opt.step(list(model(*batch)), task_weights=[1.0, 0.5])
    expected = ck.camegrad_step(
        opt.camegrad.grads, [1.0, 0.5], rho=0.3, method=method, method_options=options,
        backend=opt.camegrad.backend, return_info=True,
    )[1]
    torch.testing.assert_close(info.coeffs, expected.coeffs)
    with pytest.raises(ValueError, match="method"):
        ck.CAME_Grad(torch.optim.SGD(model.parameters(), lr=0.1), method="nash")
    with pytest.raises(ValueError, match="method_options"):
        ck.CAME_Grad(torch.optim.SGD(model.parameters(), lr=0.1), method="linear",
                     method_options={"seed": 1})


# --------------------------------------------------------------------------- presets


def test_presets_match_the_paper():
    mimic = {  # Table D.1
        "promptmrg": (0.2, 1.5, 0.1), "revtaf": (0.5, 1.5, 0.2), "ddatr": (0.5, 1.5, 0.2),
        "dcl": (0.5, 1.5, 0.2), "xpronet": (0.3, 1.5, 0.4), "camanet": (0.4, 1.5, 0.5),
        "tgrg": (0.1, 1.7, 0.8), "wcl": (0.2, 1.0, 0.9),
    }
    iu = {  # Table E.1 (zero-shot backbones inherit MIMIC-CXR)
        "promptmrg": mimic["promptmrg"], "revtaf": mimic["revtaf"], "ddatr": mimic["ddatr"],
        "dcl": (0.5, 1.5, 0.8), "xpronet": (0.1, 1.0, 0.8), "camanet": (0.5, 2.0, 0.9),
        "tgrg": (0.1, 1.0, 0.9), "wcl": (0.1, 1.1, 0.4),
    }
    for dataset, table in (("mimic-cxr", mimic), ("iu-xray", iu)):
        got = {k: (v["rho"], v["kappa"], v["nu"]) for k, v in ck.PRESETS[dataset].items()}
        assert got == table


def test_camegrad_preset():
    enc = torch.nn.Linear(3, 3)
    cg = ck.CAMEGrad.preset("TGRG", enc.parameters())
    assert (cg.rho, cg.kappa, cg.nu) == (0.1, 1.7, 0.8)
    cg = ck.CAMEGrad.preset("camanet", enc, dataset="iu-xray", nu=0.3, weights=[1.0, 0.5])
    assert (cg.rho, cg.kappa, cg.nu, cg.weights) == (0.5, 2.0, 0.3, [1.0, 0.5])
    with pytest.raises(ValueError, match="name: expected one of"):
        ck.CAMEGrad.preset("r2gen", enc)
    with pytest.raises(ValueError, match="dataset: expected one of"):
        ck.CAMEGrad.preset("wcl", enc, dataset="chexpert")
    ck.presets.preset("wcl")["nu"] = 0.0  # a copy: the table is untouched
    assert ck.PRESETS["mimic-cxr"]["wcl"]["nu"] == 0.9


# --------------------------------------------------------------------------- native solvers

NATIVE = [name for name in ck.available_backends() if name != "torch"]
# Without a GPU the Triton kernels run under the (slow) interpreter.
INTERPRETED = not torch.cuda.is_available()
KINDS = ["random", "conflicting", "collinear", "opposing", "zero"]


def _native_cases(n: int, kind: str, dtype: torch.dtype, seed: int):
    """(name, args) of the three baseline solves on one Gram, every option."""
    M = make_grads(kind, n, 6 if kind == "random" else 40, F64, seed=seed)
    M = (M @ M.T).to(dtype)
    w = (torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=F64) + 0.2).to(dtype)
    order = methods.pcgrad_order(n, seed)
    return [
        *[("cagrad", (M, w, 0.4, r)) for r in (0, 1, 2)],
        *[("mgda", (M, w, nz)) for nz in ("none", "l2")],
        *[("pcgrad", (M, w, order, red)) for red in ("sum", "mean")],
    ]


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("n,kind", [(1, "random"), (3, "conflicting"), (5, "random")]
                         + [(4, kind) for kind in KINDS])
def test_native_solvers_match_methods(backend, n, kind):
    """Each backend's native baseline solvers against the methods' torch solves (float64, all options)."""
    if backend == "triton" and INTERPRETED and (n, kind) != (3, "conflicting"):
        # ~20 s each under the interpreter: one geometry here, the rest in test_triton.py.
        pytest.skip("the Triton interpreter is slow: its geometries run in tests/test_triton.py")
    module = backends.load(backend)
    unique = kind in ("random", "conflicting")  # full rank: alpha is unique
    # Interpreted Triton: float64 (tests/test_triton.py runs its fp32 solves).
    dtypes = [(F64, 1e-9), (torch.float32, 1e-5)]
    if backend == "triton" and INTERPRETED:
        dtypes = dtypes[:1]
    for dtype, tol in dtypes:
        for name, args in _native_cases(n, kind, dtype, seed=n):
            got = module.solvers()[name](*args)
            want = methods.get(name).solve(*args)
            assert [t.dtype for t in got] == [dtype] * 3 + [torch.bool], name
            for a, b in zip(got, want):
                assert torch.equal(a.isnan(), b.isnan()), (name, a, b)
            alpha, coeffs, gap = (t.nan_to_num().double() for t in got[:3])
            alpha_w, coeffs_w, gap_w = (t.nan_to_num().double() for t in want[:3])
            # The updates c @ G agree, in the Gram's norm (a singular Gram leaves
            # alpha, and so c, free along its null space).
            M = args[0].double()
            diff = coeffs - coeffs_w
            scale = float(torch.sqrt(torch.diagonal(M).max())) * (1 + float(coeffs_w.abs().sum()))
            assert float(torch.sqrt((diff @ M @ diff).clamp_min(0))) <= tol * max(scale, 1e-300), (
                name, args[2:], coeffs, coeffs_w,
            )
            if unique:
                assert float((alpha - alpha_w).abs().max()) <= tol, (name, alpha, alpha_w)
                assert float((coeffs - coeffs_w).abs().max()) <= tol * max(
                    1.0, float(coeffs_w.abs().max())
                ), (name, args[2:], coeffs, coeffs_w)
            assert abs(float(gap) - float(gap_w)) <= max(tol, 1e-6), (name, gap, gap_w)
            assert not bool(got[3])


@pytest.mark.parametrize("backend", NATIVE)
def test_native_solvers_nonfinite_and_bad_order(backend):
    module = backends.load(backend)
    M = make_grads("random", 3, 10, F64)
    M = M @ M.T
    w = torch.ones(3, dtype=F64)
    bad = M.clone()
    bad[0, 2] = float("inf")
    cases = _native_cases(3, "random", F64, seed=0)
    if backend == "triton" and INTERPRETED:  # test_triton.py: every method's non-finite Gram
        cases = []
    for name, args in cases:
        alpha, coeffs, gap, skipped = module.solvers()[name](bad, *args[1:])
        assert bool(skipped) and torch.equal(coeffs, torch.zeros(3, dtype=F64)), name
        assert alpha.isnan().all() and gap.isnan(), name
    # Out-of-range and self entries of an order are skipped, not read.
    order = torch.tensor([[0, 7, -1], [1, -5, 3], [9, 2, 2]])
    got = module.solvers()["pcgrad"](M, w, order, "sum")
    torch.testing.assert_close(got[1], methods.pcgrad_coefficients(M, w, order, "sum")[1])
    torch.testing.assert_close(got[1], torch.ones(3, dtype=F64))
