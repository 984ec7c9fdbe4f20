"""The end-to-end part of bench_step.py (``--e2e``): the overhead in a training step."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable

import torch
from harness import ROOT, Timer, measure
from implementations import BACKENDS, backend_can_run

import camegrad_kernels as cg


def e2e(args: argparse.Namespace, device: torch.device, implementations: list[str], log) -> dict:
    """Training step of python/train_multitask.py: linear scalarization vs CAME-Grad.

    Uses the script's data, model and ``CAMEGrad`` trainer (imported, not copied).
    Per backend, the whole step (zero_grad, forward of all task losses, the
    backward(s), the update, AdamW) is timed over pre-generated batches:
      linear_1bwd  sum(losses).backward(): the cheapest linear scalarization;
      linear_cg    CAMEGrad(stages=()): n per-task backwards + c = w (the script's baseline);
      camegrad     CAMEGrad(all stages, backend=...), the script's defaults.
    Overhead = (t_camegrad - t_linear) / t_camegrad, i.e. as % of the whole CAME-Grad step.
    """
    sys.path.insert(0, str(ROOT / "python"))
    import train_multitask as tm

    threads = torch.get_num_threads()
    if args.e2e_threads > 0:
        torch.set_num_threads(args.e2e_threads)
    result = {
        "source": "python/train_multitask.py (SyntheticRRG, MultiTaskRRG) + camegrad_kernels.trainer.CAMEGrad",
        "threads": torch.get_num_threads(),
        "batch": args.e2e_batch,
        "tasks_n": args.e2e_tasks + 1,
        "steps_timed": args.e2e_steps,
        "configs": [],
    }
    try:
        data = tm.SyntheticRRG(0)
        batches = [data.batch(i, args.e2e_batch, device) for i in range(1, 9)]
        names = [
            m for m in implementations if m in BACKENDS and backend_can_run(m, device, torch.float32) is None
        ]
        for dim in args.e2e_dim:
            torch.manual_seed(0)
            model = tm.MultiTaskRRG(data.vocab, data.C, args.e2e_tasks, dim=dim).to(device)
            result["configs"].append(e2e_config(model, batches, dim, names, args, device, log))
    finally:
        torch.set_num_threads(threads)
    return result


def training_steps(model, opt, batches: list):
    """(next_batch, the 1-backward linear step, trainer -> its step), cycling over ``batches``."""
    k = [0]

    def next_batch():
        k[0] += 1
        return batches[k[0] % len(batches)]

    def step_linear_1bwd():
        opt.zero_grad(set_to_none=True)
        losses, _ = model.losses(next_batch())
        torch.stack(losses).sum().backward()
        opt.step()

    def make_cg_step(trainer) -> Callable[[], None]:
        def step():
            opt.zero_grad(set_to_none=True)
            losses, _ = model.losses(next_batch())
            trainer.backward(losses)
            opt.step()

        return step

    return next_batch, step_linear_1bwd, make_cg_step


def e2e_config(model, batches: list, dim: int, names: list[str], args: argparse.Namespace,
               device: torch.device, log) -> dict:
    """The e2e rows and overheads of one model (feature dim ``dim``), backends ``names``."""
    from camegrad_kernels.trainer import CAMEGrad

    shared = sum(p.numel() for p in model.encoder.parameters())
    timer = Timer(device)
    cfg = {"dim": dim, "d_shared": shared, "params_total": sum(p.numel() for p in model.parameters()), "rows": []}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    next_batch, step_linear_1bwd, make_cg_step = training_steps(model, opt, batches)

    variants = [("linear_1bwd", None, step_linear_1bwd)]
    for name in names:
        lin = CAMEGrad(model.encoder.parameters(), stages=(), backend=name)
        variants.append((f"linear_cg[{name}]", name, make_cg_step(lin)))
        full = CAMEGrad(model.encoder.parameters(), backend=name)
        variants.append((f"camegrad[{name}]", name, make_cg_step(full)))
    times = {}
    for label, backend, fn in variants:
        t = measure(fn, timer, args.e2e_steps, 3, 0.0)
        times[label] = t["median"]
        cfg["rows"].append({"variant": label, "backend": backend, "time": t, "time_s": t["median"]})
        log(f"  e2e dim={dim} d={shared}: {label:>22}: {1e3 * t['median']:8.3f} ms/step")
    for name in names:
        full = CAMEGrad(model.encoder.parameters(), backend=name)
        # Kernel alone: the step on the [n, d] buffer the trainer fills.
        losses, _ = model.losses(next_batch())
        full.backward(losses)
        G = full.grads
        out = torch.empty(G.shape[1], dtype=G.dtype, device=G.device)
        kt = measure(functools.partial(cg.camegrad_step, G, backend=name, out=out), timer, 20, 3, 0.2)
        t_cg = times[f"camegrad[{name}]"]
        o = {
            "camegrad_step_s": t_cg,
            "linear_1bwd_s": times["linear_1bwd"],
            "linear_cg_s": times[f"linear_cg[{name}]"],
            "kernel_s": kt["median"],
            "overhead_vs_linear_1bwd_pct_of_step": 100 * (t_cg - times["linear_1bwd"]) / t_cg,
            "overhead_vs_linear_cg_pct_of_step": 100 * (t_cg - times[f"linear_cg[{name}]"]) / t_cg,
            "kernel_pct_of_step": 100 * kt["median"] / t_cg,
        }
        cfg.setdefault("overhead", {})[name] = o
        log(
            f"  e2e dim={dim} [{name}]: CAME-Grad step {1e3 * t_cg:.2f} ms; overhead vs 1-backward linear "
            f"{o['overhead_vs_linear_1bwd_pct_of_step']:.1f}% of the step, vs per-task-backward linear "
            f"{o['overhead_vs_linear_cg_pct_of_step']:.1f}%; camegrad_step alone {1e3 * kt['median']:.3f} ms "
            f"= {o['kernel_pct_of_step']:.1f}%"
        )
    return cfg
