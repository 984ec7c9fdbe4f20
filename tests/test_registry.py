"""The method and backend registries: what is derived from them, and what really ran."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch
from helpers import make_grads

import camegrad_kernels as ck
from camegrad_kernels import backends, methods
from camegrad_kernels.trainer import TRAINERS


def test_ops_registered_at_import():
    code = (
        "import torch, camegrad_kernels\n"
        "names = ['camegrad_torch::' + m for m in camegrad_kernels.methods.METHODS]\n"
        "if camegrad_kernels.ops.HAS_CPU_OPS:\n"
        "    names += ['camegrad::gram', 'camegrad::coefficients', 'camegrad::combine_out']\n"
        "for name in names:\n"
        "    ns, op = name.split('::')\n"
        "    getattr(getattr(torch.ops, ns), op).default\n"
        "print(len(names))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= len(methods.METHODS)


def test_every_spec_is_complete():
    for name, spec in methods.REGISTRY.items():
        assert spec.name == name and spec.title and spec.alpha and spec.gap
        assert set(spec.reads) <= {"rho", "kappa", "nu", "eps", "stages"}
        defaults = spec.check_options(None)
        assert defaults == spec.defaults()
        args = spec.solve_args(
            methods.Hyper(0.5, 1.5, 0.2, 1e-8, 7), defaults, 3, torch.device("cpu")
        )
        M = make_grads("conflicting", 3, 20, torch.float64, seed=1)
        M = M @ M.T
        alpha, coeffs, gap, skipped = spec.solve(M, torch.ones(3, dtype=torch.float64), *args)
        assert (
            coeffs.shape == (3,) and alpha.shape == (3,) and gap.shape == () and not bool(skipped)
        )


def test_unknown_method_and_options():
    with pytest.raises(ValueError, match="method: expected one of"):
        methods.get("upgrad-typo")
    with pytest.raises(ValueError, match=r"method_options: \['rescale'\] not accepted by method"):
        methods.check_method("mgda", {"rescale": 1})
    with pytest.raises(TypeError, match="method_options: expected a dict or None"):
        methods.check_method("cagrad", [("rescale", 1)])


def test_trainer_classes_come_from_the_registry():
    named = {spec.trainer: spec for spec in methods.REGISTRY.values() if spec.trainer}
    assert set(TRAINERS) == set(named)
    for cls_name, spec in named.items():
        cls = getattr(ck, cls_name)
        assert cls is TRAINERS[cls_name] and issubclass(cls, ck.CAMEGrad)
        params = inspect.signature(cls).parameters
        for arg in spec.trainer_args:
            assert params[arg.name].default == arg.default
        p = torch.nn.Parameter(torch.zeros(5))
        trainer = cls([p])
        assert trainer.method == spec.name
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['rho'\]"):
        ck.CAGrad([torch.nn.Parameter(torch.zeros(2))], rho=0.3)
    assert ck.CAGrad([torch.nn.Parameter(torch.zeros(2))], c=0.25).rho == 0.25


def test_cli_choices_come_from_the_registry():
    sys.path.insert(0, "python")
    try:
        import train_multitask
    finally:
        sys.path.pop(0)
    parser = train_multitask.build_parser()
    actions = {a.dest: a for a in parser._actions}
    assert tuple(actions["method"].choices) == methods.METHODS
    assert tuple(actions["backend"].choices) == backends.NAMES


@pytest.mark.parametrize("n", [3, 70])
def test_info_backends_reports_the_fallbacks(n, monkeypatch):
    """Beyond a backend's per-pass task limit the pass runs with "torch", and info says so."""
    if "cpu" not in ck.available_backends():
        pytest.skip("the C++ extension is not built")
    monkeypatch.setattr(backends.cpu, "MAX_TASKS", {"solve": 64})
    monkeypatch.setattr(backends, "_PLANS", {})
    G = make_grads("conflicting", n, 50, torch.float32, seed=n)
    _, info = ck.step(G, "cagrad", backend="cpu", return_info=True)
    solve = "cpu" if n <= 64 else "torch"
    assert info.backends == {"gram": "cpu", "solve": solve, "combine": "cpu"}
    assert info.backend == ("cpu" if n <= 64 else "gram=cpu,solve=torch,combine=cpu")


def test_triton_limits_match_its_kernels():
    pytest.importorskip("triton")
    import camegrad_kernels.triton_ops  # noqa: F401 - its package rebinds gram to the function

    gram = sys.modules["camegrad_kernels.triton_ops.gram"]
    solve = sys.modules["camegrad_kernels.triton_ops.solve"]
    assert backends.triton.MAX_TASKS == {"gram": gram.MAX_N, "solve": solve.SOLVE_MAX_N}


def test_plans_are_cached():
    device = torch.device("cpu")
    first = backends.resolve("torch", device, torch.float32, 4)
    assert backends.resolve("torch", device, torch.float32, 4) is first


@pytest.mark.parametrize("backend", ck.available_backends())
def test_linear_forms_no_gram(backend, monkeypatch):
    """method="linear" runs one pass over G (the combine) unless the info asks for the Gram."""
    G = make_grads("random", 3, 41, torch.float32, seed=2)
    plan = backends.resolve(backend, G.device, G.dtype, 3)

    def forbidden(grads):
        raise AssertionError("a Gram pass for linear scalarization")

    monkeypatch.setitem(
        backends._PLANS,
        (backend, G.device, G.dtype, 3),
        plan.__class__(
            plan.name, backends.Pass(plan.gram.backend, forbidden), plan.combine, plan.solvers
        ),
    )
    w = [1.0, 0.5, 2.0]
    for nonfinite in ("raise", "skip"):
        u = ck.step(G, "linear", w, backend=backend, nonfinite=nonfinite)
        expect = torch.tensor(w) @ G
        torch.testing.assert_close(u, expect, rtol=1e-6, atol=1e-6)
    bad = G.clone()
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"task gradient\(s\) \[1\] hold NaN or Inf"):
        ck.step(bad, "linear", backend=backend)
    out = ck.step(bad, "linear", backend=backend, nonfinite="skip")
    assert torch.equal(out, torch.zeros_like(out))
    monkeypatch.undo()
    _, info = ck.step(G, "linear", w, backend=backend, return_info=True)
    assert info.gram.shape == (3, 3) and torch.equal(
        info.coeffs, torch.tensor(w, dtype=torch.float64)
    )


def test_torch_solves_pass_opcheck():
    """Every method's torch-ops solve is a custom op that torch.library.opcheck accepts."""
    M = make_grads("conflicting", 3, 20, torch.float64, seed=4)
    M = M @ M.T
    w = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    hyper = methods.Hyper(0.5, 1.5, 0.2, 1e-8, 7)
    for name, spec in methods.REGISTRY.items():
        args = (
            M,
            w,
            *spec.solve_args(
                hyper, spec.check_options({"seed": 1} if spec.random_option else None), 3, M.device
            ),
        )
        op = getattr(torch.ops.camegrad_torch, name).default
        alpha = spec.solve(*args)[0]
        # A method that solves nothing returns NaN alpha/gap, which the AOT check compares
        # without equal_nan: it runs every other check.
        utils = ("test_schema", "test_autograd_registration", "test_faketensor")
        if bool(torch.isfinite(alpha).all()):
            utils += ("test_aot_dispatch_dynamic",)
        torch.library.opcheck(op, args, test_utils=utils)
