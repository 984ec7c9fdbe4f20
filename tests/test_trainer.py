"""camegrad_kernels.trainer.CAMEGrad: per-task backwards into one buffer + optimizer glue."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import camegrad_kernels as ck
from camegrad_kernels import backends, reference
from camegrad_kernels.trainer import CAMEGrad, TrainStepInfo

WEIGHTS = [1.0, 0.5, 2.0]


class Net(nn.Module):
    """A shared trunk (with a frozen parameter) and three task heads; task 2 also
    has a private head that never touches ``trunk.extra``."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5))
        self.trunk.extra = nn.Parameter(torch.randn(5))  # used by tasks 0 and 1 only
        self.frozen = nn.Parameter(torch.randn(5), requires_grad=False)
        self.heads = nn.ModuleList(nn.Linear(5, 1) for _ in range(3))
        self.to(dtype)

    def losses(self, x, y):
        z = self.trunk(x) + self.frozen
        out = [
            (self.heads[0](z * self.trunk.extra).squeeze(-1) - y).pow(2).mean(),
            torch.nn.functional.softplus(self.heads[1](z + self.trunk.extra)).mean(),
            (self.heads[2](z).squeeze(-1) * y).sin().mean(),
        ]
        return out


def shared(model):
    return [p for p in model.trunk.parameters() if p.requires_grad]


def batch(seed=0, dtype=torch.float32, bs=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(bs, 6, generator=g).to(dtype), torch.randn(bs, generator=g).to(dtype)


def slow_task_grads(model, x, y):
    """G [n, d] of the shared parameters, and the per-task grads of the others,
    by torch.autograd.grad per task."""
    losses = model.losses(x, y)
    sh = shared(model)
    others = [
        p for n_, p in model.named_parameters() if p.requires_grad and not n_.startswith("trunk")
    ]
    rows, other_grads = [], []
    for loss in losses:
        gs = torch.autograd.grad(loss, sh + others, retain_graph=True, allow_unused=True)
        full = [torch.zeros_like(p) if g is None else g for g, p in zip(gs, sh + others)]
        rows.append(torch.cat([g.flatten() for g in full[: len(sh)]]))
        other_grads.append(full[len(sh) :])
    return torch.stack(rows), other_grads, others


def flat_grad(params):
    return torch.cat([p.grad.flatten() for p in params])


def make(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return Net(dtype)


# --------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_update_matches_reference(dtype, tol, weights):
    model = make(dtype=dtype)
    x, y = batch(dtype=dtype)
    G, _, _ = slow_task_grads(model, x, y)
    assert G[2, :5].abs().max() == 0  # task 2 does not reach trunk.extra (listed first)
    cg = CAMEGrad(model.trunk.parameters(), weights, backend="torch")
    info = cg.backward(model.losses(x, y))
    expected, ref_info = reference.camegrad_step(G, weights, return_info=True)
    got = flat_grad(shared(model)).double()
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= tol * scale
    assert torch.equal(cg.grads, G)  # the rows are exactly the per-task gradients
    assert torch.allclose(
        info.alpha.double(), ref_info.alpha, atol=1e-4 if dtype == torch.float32 else 1e-8
    )
    # diagnostics
    assert isinstance(info, TrainStepInfo)
    Gd = G.double()
    assert torch.allclose(info.task_norms.double(), Gd.norm(dim=1), rtol=1e-5)
    cos = (Gd @ Gd.T) / (Gd.norm(dim=1)[:, None] * Gd.norm(dim=1)[None, :])
    assert torch.allclose(info.cosines.double(), cos, atol=1e-5)
    pairs = torch.stack([cos[0, 1], cos[0, 2], cos[1, 2]])
    assert float(info.negative_ratio) == pytest.approx(float((pairs < 0).double().mean()))
    assert info.losses.shape == (3,)
    assert info.backend == "torch"


def _native(name):
    try:
        module = backends.load(name)
    except ImportError as exc:  # a backend module that is not there (yet)
        pytest.skip(f"backend {name!r} cannot be imported: {exc}")
    reason = module.unavailable_reason(torch.device("cpu"), torch.float32)
    if reason is not None:
        pytest.skip(f"backend {name!r} cannot run CPU tensors here: {reason}")


@pytest.mark.parametrize("backend", [b for b in backends.PRIORITY if b != "torch"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-10)])
def test_update_matches_reference_native_backends(backend, dtype, tol):
    _native(backend)
    model = make(dtype=dtype)
    x, y = batch(dtype=dtype)
    G, _, _ = slow_task_grads(model, x, y)
    cg = CAMEGrad(model.trunk.parameters(), WEIGHTS, backend=backend)
    info = cg.backward(model.losses(x, y))
    expected = reference.camegrad_step(G, WEIGHTS)
    got = flat_grad(shared(model)).double()
    assert (got - expected).abs().max() <= tol * expected.abs().max()
    assert info.backend == backend


@pytest.mark.parametrize("weights", [None, WEIGHTS, [0.0, 1.0, 3.0]])
def test_non_shared_params_get_weighted_sum(weights):
    model = make()
    x, y = batch()
    _, per_task, others = slow_task_grads(model, x, y)
    w = weights or [1.0, 1.0, 1.0]
    # a pre-existing .grad is accumulated into, like a normal backward
    others[0].grad = torch.ones_like(others[0])
    CAMEGrad(model.trunk.parameters(), weights, backend="torch").backward(model.losses(x, y))
    for k, p in enumerate(others):
        expected = sum(w[i] * per_task[i][k] for i in range(3))
        if k == 0:
            expected = expected + 1.0
        torch.testing.assert_close(p.grad, expected, rtol=1e-6, atol=1e-7)
    assert model.frozen.grad is None


def test_hooks_are_removed_and_other_backwards_unaffected():
    model = make()
    x, y = batch()
    cg = CAMEGrad(model.trunk.parameters(), [3.0, 3.0, 3.0], backend="torch")
    cg.backward(model.losses(x, y))
    model.zero_grad(set_to_none=True)
    sum(model.losses(x, y)).backward()  # a plain backward afterwards: no scaling left over
    expected = torch.autograd.grad(sum(model.losses(x, y)), [model.heads[0].weight])[0]
    torch.testing.assert_close(model.heads[0].weight.grad, expected)


def test_linear_scalarization_equals_weighted_sum_backward():
    model = make()
    twin = copy.deepcopy(model)
    x, y = batch()
    CAMEGrad(model.trunk.parameters(), WEIGHTS, stages=(), backend="torch").backward(
        model.losses(x, y)
    )
    sum(w * l for w, l in zip(WEIGHTS, twin.losses(x, y))).backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        if q.grad is None:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)


def test_task_reaching_no_shared_param_gives_zero_row():
    model = make()
    x, y = batch()
    losses = model.losses(x, y)
    losses[1] = model.heads[1].bias.pow(2).sum()  # requires grad, never touches the trunk
    G, _, _ = slow_task_grads(model, x, y)
    G[1] = 0
    cg = CAMEGrad(model.trunk.parameters(), backend="torch")
    info = cg.backward(losses)
    assert cg.grads[1].abs().max() == 0
    assert info.task_norms[1] == 0 and (info.cosines[1, [0, 2]] == 0).all()
    # 0 = g_1 lies in the convex hull of the gradients: a degenerate dual, where
    # the smoothed dual still gives a primal-optimal direction (docs/camegrad.md §4),
    # as the float64 reference (its certificate checked) does.
    expected = reference.camegrad_step(G.double())
    got = flat_grad(shared(model)).double()
    assert (got - expected).abs().max() <= 2e-5 * expected.abs().max()
    assert float(info.duality_gap) <= 1e-5
    assert model.heads[1].bias.grad is not None


# --------------------------------------------------------------------------- buffers, optimizers


def test_no_new_buffers_across_steps_and_optimizers_step():
    model = make()
    sh = shared(model)
    cg = CAMEGrad(model.trunk.parameters(), WEIGHTS, backend="torch")
    opt = torch.optim.AdamW(
        [{"params": sh, "lr": 1e-2}, {"params": [p for p in model.heads.parameters()], "lr": 5e-3}],
        weight_decay=0.01,
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    ptrs = None
    for step in range(4):
        before = [p.detach().clone() for p in sh]
        opt.zero_grad(set_to_none=True)
        info = cg.backward(model.losses(*batch(step)))
        now = (cg.grads.data_ptr(), cg.update.data_ptr(), tuple(p.grad.data_ptr() for p in sh))
        assert now[2] == tuple(v.data_ptr() for v in cg.buffer.views(cg.update))
        if ptrs is None:
            ptrs = now
        assert now == ptrs, "a buffer was reallocated"
        opt.step()
        sched.step()
        assert not info.skipped
        for p, b in zip(sh, before):
            assert torch.isfinite(p).all()
            assert not torch.equal(p, b)


def test_sgd_steps_exactly_on_the_update():
    model = make()
    sh = shared(model)
    cg = CAMEGrad(sh, backend="torch")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad(set_to_none=False)  # zeroing in place must not break anything either
    cg.backward(model.losses(*batch()))
    before = torch.cat([p.detach().flatten() for p in sh])
    update = cg.update.clone()
    opt.step()
    after = torch.cat([p.detach().flatten() for p in sh])
    torch.testing.assert_close(after, before - 0.1 * update)


def test_number_of_tasks_is_fixed():
    model = make()
    cg = CAMEGrad(model.trunk.parameters(), backend="torch")
    cg.backward(model.losses(*batch()))
    with pytest.raises(ValueError, match="losses: expected 3 losses"):
        cg.backward(model.losses(*batch())[:2])


def test_single_task_and_tensor_of_losses():
    model = make()
    cg = CAMEGrad(model.trunk.parameters(), backend="torch")
    info = cg.backward(torch.stack(model.losses(*batch())))
    assert info.coeffs.shape == (3,)
    model2 = make()
    info = CAMEGrad(model2.trunk.parameters(), backend="torch").backward(
        model2.losses(*batch())[:1]
    )
    assert torch.isnan(info.negative_ratio)  # no pairs
    # n = 1: g_final = kappa * w_0 * g_0
    G, _, _ = slow_task_grads(model2, *batch())
    torch.testing.assert_close(flat_grad(shared(model2)), 1.5 * G[0], rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- precision, scaling


def test_bf16_params_with_cpu_autocast():
    model = make(dtype=torch.bfloat16)
    x, y = batch(dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        G, _, _ = slow_task_grads(model, x, y)
        losses = model.losses(x, y)
    cg = CAMEGrad(model.trunk.parameters(), WEIGHTS, backend="torch")
    info = cg.backward(losses)
    assert cg.grads.dtype == torch.bfloat16 and all(
        p.grad.dtype == torch.bfloat16 for p in shared(model)
    )
    assert torch.equal(cg.grads, G)
    # The API accumulates bf16 in fp32, so compare with the reference run on the
    # same (exactly representable) values in fp32: given bf16 input, the reference
    # would use bf16's r-tolerance (10 sqrt(eps) ~ 0.9 max ||g_i||) for Stage 1.
    expected = reference.camegrad_step(G.float(), WEIGHTS)
    got = flat_grad(shared(model)).double()
    assert (got - expected).norm() <= 1e-2 * expected.norm()
    assert info.gram.dtype == torch.float64  # the Gram is float64 for every dtype


def test_fp32_params_with_bf16_autocast():
    model = make()
    x, y = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.losses(x, y)
    cg = CAMEGrad(model.trunk.parameters(), backend="torch")
    cg.backward(losses)
    assert cg.grads.dtype == torch.float32
    assert torch.isfinite(cg.update).all() and cg.update.abs().max() > 0


@pytest.mark.parametrize("eps,rtol", [(0.0, 1e-10), (1e-8, 1e-4)])
@pytest.mark.parametrize("scale", [1024.0, 2.0**-6])
def test_loss_scaling_homogeneity(scale, eps, rtol):
    # Multiplying every loss by S (what GradScaler does) scales every g_i by S:
    # alpha and the coefficients c are unchanged and the update c^T G scales by S,
    # up to Stage 2's eps, whose
    # relative weight eps / ||u_rect|| changes by the factor 1/S.
    model = make(dtype=torch.float64)
    x, y = batch(dtype=torch.float64)
    cg = CAMEGrad(model.trunk.parameters(), WEIGHTS, eps=eps, backend="torch")
    info = cg.backward(model.losses(x, y))
    plain = cg.update.clone()
    info_s = cg.backward([scale * l for l in model.losses(x, y)])
    torch.testing.assert_close(info_s.alpha, info.alpha, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(info_s.coeffs, info.coeffs, rtol=rtol, atol=0)  # c is scale-free
    torch.testing.assert_close(
        cg.update / scale, plain, rtol=rtol, atol=rtol * plain.abs().max().item()
    )


def test_grad_scaler_unscales_to_the_plain_update():
    model = make()
    twin = copy.deepcopy(model)
    x, y = batch()
    cg = CAMEGrad(model.trunk.parameters(), WEIGHTS, backend="torch", nonfinite="propagate")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    info = cg.backward([scaler.scale(l) for l in model.losses(x, y)])
    cg_plain = CAMEGrad(twin.trunk.parameters(), WEIGHTS, backend="torch")
    info_plain = cg_plain.backward(twin.losses(x, y))
    torch.testing.assert_close(info.alpha, info_plain.alpha, rtol=1e-4, atol=1e-5)
    scaler.unscale_(opt)
    for p, q in zip(model.parameters(), twin.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**12  # finite: no back-off


def test_propagate_lets_grad_scaler_skip_an_overflow():
    model = make()
    sh = shared(model)
    cg = CAMEGrad(sh, backend="torch", nonfinite="propagate")
    opt = torch.optim.SGD(sh, lr=0.1)  # shared parameters only: the scaler sees only the update
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    losses = model.losses(*batch())
    losses[1] = losses[1] * torch.tensor(float("inf"))
    info = cg.backward([scaler.scale(l) for l in losses])
    assert bool(info.skipped) and torch.isnan(cg.update).all()
    before = [p.detach().clone() for p in sh]
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(sh, before))
    assert scaler.get_scale() < 2.0**12


def test_nonfinite_raise_and_skip():
    model = make()
    losses = model.losses(*batch())
    losses[2] = losses[2] * float("nan")
    cg_err = CAMEGrad(model.trunk.parameters(), backend="torch")
    cg_err.update.fill_(7.0)  # pretend a previous step left an update there
    with pytest.raises(ValueError, match=r"task gradient\(s\) \[2\]"):
        cg_err.backward(losses)
    # after an error the shared .grad is the (zeroed) update buffer, not a task row
    sh = shared(model)
    assert all(
        p.grad.data_ptr() == v.data_ptr() for p, v in zip(sh, cg_err.buffer.views(cg_err.update))
    )
    assert (cg_err.update == 0).all()
    cg = CAMEGrad(model.trunk.parameters(), backend="torch", nonfinite="skip")
    losses = model.losses(*batch())
    losses[2] = losses[2] * float("nan")
    info = cg.backward(losses)
    assert bool(info.skipped) and (cg.update == 0).all()


def test_timing_mode_matches_fused_step():
    model = make()
    twin = copy.deepcopy(model)
    x, y = batch()
    timed = CAMEGrad(model.trunk.parameters(), WEIGHTS, backend="torch", timing=True)
    info_t = timed.backward(model.losses(x, y))
    info = CAMEGrad(twin.trunk.parameters(), WEIGHTS, backend="torch").backward(
        twin.losses(x, y)
    )
    assert set(timed.timings) == {"backward", "gram", "solve", "combine"}
    assert all(v >= 0 for v in timed.timings.values())
    torch.testing.assert_close(flat_grad(shared(model)), flat_grad(shared(twin)))
    torch.testing.assert_close(info_t.coeffs, info.coeffs)
    assert info_t.backend == "torch"


_METHOD_CASES = [
    ("pcgrad", {"seed": 3}),
    ("pcgrad", {"seed": 3, "reduction": "mean"}),
    ("mgda", None),
    ("mgda", {"normalization": "l2"}),
    ("cagrad", None),
    ("cagrad", {"rescale": 2}),
    ("linear", None),
]


@pytest.mark.parametrize("timing", [False, True])
@pytest.mark.parametrize("weights", [None, WEIGHTS])
@pytest.mark.parametrize("method,options", _METHOD_CASES)
def test_method_update_matches_camegrad_step(method, options, weights, timing):
    model = make(dtype=torch.float64)
    x, y = batch(dtype=torch.float64)
    G, _, _ = slow_task_grads(model, x, y)
    cg = CAMEGrad(
        model.trunk.parameters(), weights, rho=0.4, backend="torch",
        method=method, method_options=options, timing=timing,
    )
    info = cg.backward(model.losses(x, y))
    if method == "pcgrad":  # the trainer's first order comes from its seeded stream
        stream = torch.Generator().manual_seed(options["seed"])
        options = {**options, "seed": int(torch.randint(0, 2**62, (), generator=stream))}
    expected, ref_info = ck.camegrad_step(
        G, weights, rho=0.4, backend="torch", method=method, method_options=options,
        return_info=True,
    )
    torch.testing.assert_close(flat_grad(shared(model)), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(info.coeffs, ref_info.coeffs, rtol=1e-10, atol=1e-12)
    assert cg.method == method and f"method={method!r}" in repr(cg)
    if method != "linear":  # linear: the same update as CAME-Grad with stages=()
        plain = ck.camegrad_step(G, weights, rho=0.4, backend="torch")
        assert not torch.allclose(expected, plain)


def test_method_validated_at_construction():
    model = make()
    with pytest.raises(ValueError, match="method"):
        CAMEGrad(model.trunk.parameters(), method="nash")
    with pytest.raises(ValueError, match="method_options"):
        CAMEGrad(model.trunk.parameters(), method="mgda", method_options={"rescale": 1})
    with pytest.raises(TypeError, match="method_options"):
        CAMEGrad(model.trunk.parameters(), method="pcgrad", method_options=[("seed", 1)])
    with pytest.raises(ValueError, match="normalization"):
        CAMEGrad(model.trunk.parameters(), method="mgda", method_options={"normalization": "x"})
    cg = CAMEGrad(model.trunk.parameters(), method="pcgrad")
    assert cg.method_options == {"seed": None, "reduction": "sum"}  # defaults filled in


# --------------------------------------------------------------------------- errors


def test_constructor_errors():
    model = make()
    with pytest.raises(ValueError, match="shared_params"):
        CAMEGrad([])
    with pytest.raises(ValueError, match="shared_params"):
        CAMEGrad([model.frozen])  # frozen only
    with pytest.raises(TypeError, match=r"shared_params\[1\]"):
        CAMEGrad([model.trunk[0].weight, "bias"])
    with pytest.raises(TypeError, match="shared_params"):
        CAMEGrad(3)
    with pytest.raises(TypeError, match="one dtype"):
        CAMEGrad([model.trunk[0].weight, nn.Parameter(torch.zeros(3, dtype=torch.float64))])
    with pytest.raises(ValueError, match="one device"):
        CAMEGrad([model.trunk[0].weight, nn.Parameter(torch.zeros(3, device="meta"))])
    with pytest.raises(ValueError, match="leaf"):
        CAMEGrad([model.trunk[0].weight * 2])
    with pytest.raises(ValueError, match="shared_params"):
        CAMEGrad([torch.zeros(3)])  # requires_grad=False: ignored, leaving none
    with pytest.raises(ValueError, match="weights"):
        CAMEGrad(model.trunk.parameters(), [1.0, -1.0])
    with pytest.raises(ValueError, match="weights"):
        CAMEGrad(model.trunk.parameters(), [])
    with pytest.raises(ValueError, match="rho"):
        CAMEGrad(model.trunk.parameters(), rho=-1.0)
    with pytest.raises(ValueError, match="stages"):
        CAMEGrad(model.trunk.parameters(), stages=("rectify", "bogus"))
    with pytest.raises(ValueError, match="backend"):
        CAMEGrad(model.trunk.parameters(), backend="gpu")
    with pytest.raises(ValueError, match="nonfinite"):
        CAMEGrad(model.trunk.parameters(), nonfinite="ignore")
    # duplicates and frozen parameters are dropped, an nn.Module is accepted
    cg = CAMEGrad([model.trunk[0].weight, model.trunk[0].weight, model.frozen])
    assert len(cg.params) == 1 and cg.numel == 48
    assert CAMEGrad(model.trunk).numel == sum(p.numel() for p in shared(model))


def test_backward_errors():
    model = make()
    cg = CAMEGrad(model.trunk.parameters(), WEIGHTS, backend="torch")
    losses = model.losses(*batch())
    with pytest.raises(ValueError, match="losses: expected at least one"):
        cg.backward([])
    with pytest.raises(ValueError, match=r"losses: expected 3 losses \(one per weight\)"):
        cg.backward(losses[:2])
    with pytest.raises(ValueError, match=r"losses\[1\]: expected a scalar"):
        cg.backward([losses[0], torch.stack([losses[1], losses[2]]), losses[2]])
    with pytest.raises(ValueError, match=r"losses\[2\]: has no autograd graph"):
        cg.backward([losses[0], losses[1], losses[2].detach()])
    with pytest.raises(TypeError, match=r"losses\[0\]"):
        cg.backward([1.0, losses[1], losses[2]])
    with pytest.raises(TypeError, match="losses"):
        cg.backward(losses[0])  # a single 0-d tensor, not a sequence
    with pytest.raises(TypeError, match="losses"):
        cg.backward(None)
    assert cg.n is None  # nothing was fixed by failed calls
    cg.backward(losses)  # the graph is intact: validation ran before any backward


@pytest.mark.parametrize(
    "cls,kwargs,method,options",
    [
        (ck.CAGrad, {"c": 0.3, "rescale": 2}, "cagrad", {"rescale": 2}),
        (ck.MGDA, {"normalization": "l2"}, "mgda", {"normalization": "l2"}),
        (ck.PCGrad, {"seed": 7, "reduction": "mean"}, "pcgrad", {"seed": 7, "reduction": "mean"}),
        (ck.LinearScalarization, {}, "linear", None),
    ],
)
def test_baseline_trainers_are_camegrad_with_a_method(cls, kwargs, method, options):
    """Each baseline class is CAMEGrad(method=...) under its papers' argument names."""
    updates = []
    for make_trainer in (
        lambda m: cls(m.trunk.parameters(), WEIGHTS, backend="cpu", **kwargs),
        lambda m: CAMEGrad(
            m.trunk.parameters(), WEIGHTS, rho=kwargs.get("c", 0.5), backend="cpu",
            method=method, method_options=options,
        ),
    ):
        model = make(dtype=torch.float64)
        trainer = make_trainer(model)
        steps = []
        for seed in range(3):  # PCGrad: a fresh order each step, the same stream for both
            trainer.backward(model.losses(*batch(seed, torch.float64)))
            steps.append(flat_grad(shared(model)).clone())
        updates.append(steps)
        assert trainer.method == method and repr(trainer).startswith(type(trainer).__name__ + "(")
    assert repr(cls(make().trunk.parameters())).startswith(cls.__name__ + "(")
    for a, b in zip(*updates):
        assert torch.equal(a, b)


def test_pcgrad_trainer_draws_a_fresh_order_every_step():
    model = make(dtype=torch.float64)
    trainer = ck.PCGrad(model.trunk.parameters(), seed=1)
    seeds = [trainer.step_config().options["seed"] for _ in range(3)]
    assert len(set(seeds)) == 3
    again = ck.PCGrad(model.trunk.parameters(), seed=1)
    assert [again.step_config().options["seed"] for _ in range(3)] == seeds
