#!/usr/bin/env python
"""Multi-task training with CAME-Grad vs linear scalarization on synthetic "radiology" data.

A toy version of the paper's setting (Sec. 3.1): a shared visual encoder over
synthetic images, a report-generation decoder (task 0, token cross-entropy)
and K multi-label "clinical constraint" heads (tasks 1..K, BCE), all trained
from the same seed, data stream and initialisation, once with linear
scalarization and once with CAME-Grad, each through
``camegrad_kernels.trainer.CAMEGrad`` (the baseline uses ``stages=()``, whose
update is exactly sum_i w_i g_i) and AdamW with a cosine LR schedule.
``--method`` picks the second run's method (default camegrad; or one of the
baselines cagrad / mgda / pcgrad / linear of ``camegrad_kernels.methods``, run
through ``CAMEGrad(method=...)``); the run is named after it in metrics.json
and the plots ("linear-method" for ``--method linear``, which is the same
update as the stages=() baseline, computed by methods.py).

Data (deterministic, generated on the fly from --seed): each sample has C
latent findings (present / absent), each with a severity (mild / severe) and a
side (left / right). The 16x16 image is the sum of the present findings'
templates (a per-finding pattern, shifted to its side, scaled by its severity)
plus noise. The report is a token sequence built from the labels, e.g.
"<bos> severe left finding3 and mild right finding5 <eos>" or
"<bos> no acute finding <eos>". Head k predicts one "view" of the labels:
presence, severity, side, then XOR pairs of presences for k > 3.

Outputs under <out>/<name>/: metrics.json, loss_curves.png (per-task train and
validation losses of both runs), cosine_hist.png (histogram of the pairwise
task-gradient cosines with the negative ratio, as the paper's Fig. 3) and
time_split.png (mean per-step time in forward / backward / Gram / solve /
combine / optimizer). The phases are timed by CAMEGrad's timing mode, which
synchronises the device between the phases of the one step (a callback of
the step core, the same computation as camegrad_step).

    python python/train_multitask.py                  # ~1 min on 2 CPU cores (500 steps x 2 runs)
    python python/train_multitask.py --steps 3 --out /tmp/runs --name smoke
    python python/train_multitask.py --method pcgrad  # linear vs PCGrad
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from camegrad_kernels.backends import NAMES as BACKENDS
from camegrad_kernels.methods import METHODS, REGISTRY
from camegrad_kernels.trainer import CAMEGrad

# --------------------------------------------------------------------------- data

IMAGE = 16
PAD, BOS, EOS, NO, ACUTE, FINDING, MILD, SEVERE, LEFT, RIGHT, AND = range(11)
WORDS = [
    "<pad>",
    "<bos>",
    "<eos>",
    "no",
    "acute",
    "finding",
    "mild",
    "severe",
    "left",
    "right",
    "and",
]
VIEWS = ["presence", "severity", "side"]


class SyntheticRRG:
    """Deterministic synthetic image / report / label batches (all from ``seed``)."""

    def __init__(self, seed: int, findings: int = 6, prevalence: float = 0.3, noise: float = 0.35):
        self.seed = seed
        self.C = findings
        self.prevalence = prevalence
        self.noise = noise
        self.vocab = len(WORDS) + findings
        self.max_len = 2 + 4 * findings  # <bos> (sev side finding and)... <eos>
        g = torch.Generator().manual_seed(seed)
        # Per-finding template: a Gaussian blob at a finding-specific spot plus an
        # oriented stripe pattern; the "left" copy sits in the image's left half.
        yy, xx = torch.meshgrid(torch.arange(IMAGE), torch.arange(IMAGE // 2), indexing="ij")
        templates = []
        for _ in range(findings):
            cy, cx = torch.rand(2, generator=g) * torch.tensor([IMAGE - 4.0, IMAGE / 2 - 4.0]) + 2.0
            width = 1.0 + 1.5 * torch.rand((), generator=g)
            angle = math.pi * torch.rand((), generator=g)
            freq = 0.6 + 0.8 * torch.rand((), generator=g)
            blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
            stripes = torch.cos(freq * (torch.cos(angle) * xx + torch.sin(angle) * yy))
            templates.append(blob * (0.6 + 0.4 * stripes))
        self.templates = torch.stack(templates)  # [C, IMAGE, IMAGE/2]

    def batch(self, index: int, size: int, device: torch.device) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        C = self.C
        present = (torch.rand(size, C, generator=g) < self.prevalence).float()
        severe = (torch.rand(size, C, generator=g) < 0.5).float() * present
        right = (torch.rand(size, C, generator=g) < 0.5).float() * present
        half = IMAGE // 2
        images = self.noise * torch.randn(size, 1, IMAGE, IMAGE, generator=g)
        amp = present * (0.7 + 0.8 * severe)  # [B, C]
        left_part = torch.einsum("bc,chw->bhw", amp * (1 - right), self.templates)
        right_part = torch.einsum("bc,chw->bhw", amp * right, self.templates)
        images[:, 0, :, :half] += left_part
        images[:, 0, :, half:] += right_part
        tokens = torch.full((size, self.max_len), PAD, dtype=torch.long)
        for b in range(size):
            seq = [BOS]
            active = present[b].nonzero().flatten().tolist()
            if not active:
                seq += [NO, ACUTE, FINDING]
            for k, c in enumerate(active):
                if k:
                    seq.append(AND)
                seq += [
                    SEVERE if severe[b, c] else MILD,
                    RIGHT if right[b, c] else LEFT,
                    len(WORDS) + c,
                ]
            seq.append(EOS)
            tokens[b, : len(seq)] = torch.tensor(seq)
        views = [present, severe, right]
        out = {
            "images": images,
            "tokens": tokens,
            "present": present,
            "severe": severe,
            "right": right,
        }
        out["views"] = views  # type: ignore[assignment]
        return {
            k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device))
            for k, v in out.items()
        }


def view_labels(batch: dict, k: int) -> Tensor:
    """Targets of auxiliary head k (1-based): presence, severity, side, then XOR pairs."""
    present, severe, right = batch["views"]
    if k <= 3:
        return (present, severe, right)[k - 1]
    shift = k - 3
    return (present + present.roll(shift, dims=1)) % 2


def view_name(k: int) -> str:
    return VIEWS[k - 1] if k <= 3 else f"xor{k - 3}"


# --------------------------------------------------------------------------- model


class Encoder(nn.Module):
    """The shared visual encoder: a small CNN -> pooled features z [B, dim]."""

    def __init__(self, dim: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.proj = nn.Linear(32 * (IMAGE // 4) ** 2, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.gelu(self.conv1(x)), 2)
        x = F.max_pool2d(F.gelu(self.conv2(x)), 2)
        return F.gelu(self.proj(x.flatten(1)))


class ReportDecoder(nn.Module):
    """Task 0: a GRU language model conditioned on the image features."""

    def __init__(self, vocab: int, dim: int = 64, emb: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.init = nn.Linear(dim, dim)
        self.gru = nn.GRU(emb, dim, batch_first=True)
        self.out = nn.Linear(dim, vocab)

    def forward(self, z: Tensor, tokens: Tensor) -> Tensor:
        h0 = torch.tanh(self.init(z)).unsqueeze(0)
        hidden, _ = self.gru(self.embed(tokens[:, :-1]), h0)
        return self.out(hidden)  # [B, T-1, V] logits of tokens[:, 1:]


class MultiTaskRRG(nn.Module):
    def __init__(self, vocab: int, findings: int, heads: int, dim: int = 64):
        super().__init__()
        self.encoder = Encoder(dim)
        self.decoder = ReportDecoder(vocab, dim)
        self.heads = nn.ModuleList(nn.Linear(dim, findings) for _ in range(heads))

    def losses(self, batch: dict) -> tuple[list[Tensor], dict[str, float]]:
        """[L_report, L_1..L_K] and (detached) accuracies."""
        z = self.encoder(batch["images"])
        logits = self.decoder(z, batch["tokens"])
        target = batch["tokens"][:, 1:]
        losses = [F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=PAD)]
        with torch.no_grad():
            mask = target != PAD
            acc = {"report_token_acc": ((logits.argmax(-1) == target) & mask).sum() / mask.sum()}
        for k, head in enumerate(self.heads, start=1):
            out = head(z)
            labels = view_labels(batch, k)
            losses.append(F.binary_cross_entropy_with_logits(out, labels))
            with torch.no_grad():
                acc[f"{view_name(k)}_acc"] = ((out > 0).float() == labels).float().mean()
        return losses, acc


# --------------------------------------------------------------------------- training


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_name(method: str) -> str:
    """The name of the run of ``--method`` (the baseline run is "linear")."""
    return "linear-method" if method == "linear" else method


def train(args: argparse.Namespace, run: str, data: SyntheticRRG, val: dict) -> dict:
    """One run; ``run`` is "linear" (the baseline: stages=()) or :func:`run_name` of a method."""
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = MultiTaskRRG(data.vocab, data.C, args.tasks).to(device)
    n = args.tasks + 1
    weights = args.weights if args.weights is not None else None
    stages = () if run == "linear" else ("rectify", "rescale", "fuse")
    method = "camegrad" if run == "linear" else args.method
    cg = CAMEGrad(
        model.encoder.parameters(),
        weights,
        rho=args.rho,
        kappa=args.kappa,
        nu=args.nu,
        stages=stages,
        backend=args.backend,
        timing=True,
        method=method,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=max(args.steps, 1), eta_min=0.1 * args.lr
    )

    rec: dict = {
        "train_loss": [],
        "negative_ratio": [],
        "cosines": [],
        "alpha": [],
        "coeffs": [],
        "duality_gap": [],
        "task_norms": [],
        "val": {"step": [], "loss": [], "acc": []},
    }
    phases = ("forward", "backward", "gram", "solve", "combine", "optimizer")
    times: dict[str, list[float]] = {p: [] for p in phases}
    infos = []

    def evaluate(step: int) -> None:
        model.eval()
        with torch.no_grad():
            losses, acc = model.losses(val)
        model.train()
        rec["val"]["step"].append(step)
        rec["val"]["loss"].append([float(l) for l in losses])
        rec["val"]["acc"].append({k: float(v) for k, v in acc.items()})

    evaluate(0)
    start = time.perf_counter()
    bar = tqdm(
        range(1, args.steps + 1),
        desc=f"{method:>8}",
        leave=True,
        dynamic_ncols=True,
        disable=args.quiet,
    )
    for step in bar:
        batch = data.batch(step, args.batch, device)
        sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        losses, _ = model.losses(batch)
        sync(device)
        t1 = time.perf_counter()
        info = cg.backward(losses)
        t2 = time.perf_counter()
        opt.step()
        sched.step()
        sync(device)
        t3 = time.perf_counter()
        times["forward"].append(t1 - t0)
        times["optimizer"].append(t3 - t2)
        for key, value in cg.timings.items():
            times[key].append(value)
        infos.append(info)  # device tensors: read once at the end (no per-step sync)
        if step % args.eval_every == 0 or step == args.steps:
            evaluate(step)
            bar.set_postfix_str(" ".join(f"{l:.3f}" for l in rec["val"]["loss"][-1]))
    wall = time.perf_counter() - start

    iu = torch.triu_indices(n, n, offset=1)
    for info in infos:
        rec["train_loss"].append(info.losses.tolist())
        rec["negative_ratio"].append(float(info.negative_ratio))
        rec["cosines"].append(info.cosines.cpu()[iu[0], iu[1]].tolist())
        rec["alpha"].append(info.alpha.tolist())
        rec["coeffs"].append(info.coeffs.tolist())
        rec["duality_gap"].append(float(info.duality_gap))
        rec["task_norms"].append(info.task_norms.tolist())
    skip = min(3, max(len(times["forward"]) - 1, 0))  # warm-up steps are not timed
    rec["time_ms"] = {p: 1e3 * sum(v[skip:]) / max(len(v[skip:]), 1) for p, v in times.items()}
    rec["wall_s"] = wall
    rec["backend"] = infos[-1].backend if infos else None
    flat = [c for row in rec["cosines"] for c in row]
    rec["mean_negative_ratio"] = sum(c < 0 for c in flat) / max(len(flat), 1)
    rec["mean_cosine"] = sum(flat) / max(len(flat), 1)
    rec["final_val_loss"] = rec["val"]["loss"][-1]
    rec["final_val_acc"] = rec["val"]["acc"][-1]
    return rec


# --------------------------------------------------------------------------- plots

# From the method registry (each spec's plot colour and title), plus the
# linear-scalarization run through method="linear" when it is the second run.
COLORS = {name: spec.style[0] for name, spec in REGISTRY.items()} | {"linear-method": "tab:cyan"}
LABELS = {name: spec.title for name, spec in REGISTRY.items()} | {"linear-method": "linear (method=)"}


def ema(values: Sequence[float], beta: float = 0.9) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else beta * acc + (1 - beta) * v
        out.append(acc)
    return out


def task_names(tasks: int) -> list[str]:
    return ["report (CE)"] + [f"{view_name(k)} (BCE)" for k in range(1, tasks + 1)]


def plot_losses(runs: dict, names: list[str], path: str) -> None:
    n = len(names)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for i, ax in enumerate(axes[0]):
        for method, rec in runs.items():
            train = [row[i] for row in rec["train_loss"]]
            steps = range(1, len(train) + 1)
            ax.plot(steps, train, color=COLORS[method], alpha=0.2, lw=0.8)
            ax.plot(
                steps,
                ema(train),
                color=COLORS[method],
                lw=1.4,
                label=f"{LABELS[method]} (train, EMA)",
            )
            ax.plot(
                rec["val"]["step"],
                [row[i] for row in rec["val"]["loss"]],
                "o--",
                color=COLORS[method],
                ms=3,
                lw=1,
                label=f"{LABELS[method]} (val)",
            )
        ax.set_title(f"task {i}: {names[i]}")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("loss")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cosines(runs: dict, path: str) -> None:
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 3.6), squeeze=False)
    bins = [x / 20 for x in range(-20, 21)]
    for ax, (method, rec) in zip(axes[0], runs.items()):
        flat = [c for row in rec["cosines"] for c in row]
        neg = [c for c in flat if c < 0]
        pos = [c for c in flat if c >= 0]
        ax.hist(neg, bins=bins, color="tab:red", alpha=0.75, label="conflict (cos < 0)")
        ax.hist(pos, bins=bins, color="tab:green", alpha=0.75, label="synergy (cos >= 0)")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(f"{LABELS[method]}: task-gradient cosines")
        ax.set_xlabel(r"cos$\theta$ between task gradients (all pairs i<j, all steps)")
        ax.set_ylabel("count")
        ax.text(
            0.02,
            0.97,
            f"negative ratio {100 * rec['mean_negative_ratio']:.1f}%\n"
            f"mean cos {rec['mean_cosine']:.3f}",
            transform=ax.transAxes,
            va="top",
            fontsize=9,
            bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8},
        )
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_times(runs: dict, path: str) -> None:
    phases = ("forward", "backward", "gram", "solve", "combine", "optimizer")
    colors = ("tab:gray", "tab:blue", "tab:orange", "tab:red", "tab:green", "tab:purple")
    fig, ax = plt.subplots(figsize=(9, 2.8))
    methods = list(runs)
    for y, method in enumerate(methods):
        left = 0.0
        for phase, color in zip(phases, colors):
            ms = runs[method]["time_ms"][phase]
            ax.barh(y, ms, left=left, color=color, label=phase if y == 0 else None)
            if ms > 0.06 * sum(runs[method]["time_ms"].values()):
                ax.text(
                    left + ms / 2,
                    y,
                    f"{ms:.1f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white",
                )
            left += ms
        t = runs[method]["time_ms"]
        ax.text(
            left * 1.01,
            y,
            f"gram {t['gram']:.2f} + solve {t['solve']:.2f} + combine {t['combine']:.2f} ms",
            va="center",
            fontsize=7,
        )
    ax.set_xlim(0, 1.75 * max(sum(r["time_ms"].values()) for r in runs.values()))
    ax.set_yticks(range(len(methods)), [LABELS[m] for m in methods])
    ax.set_xlabel("mean time per step (ms)")
    ax.set_title(f"per-step time split (backend: {runs[methods[0]]['backend']})")
    ax.legend(ncol=6, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def strict_json(value):
    """NaN/Inf -> None (e.g. alpha of the linear run, where Stage 1 is off): strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument(
        "--tasks", type=int, default=3, help="number of auxiliary classification heads K (n = K+1)"
    )
    p.add_argument(
        "--backend", default="auto", choices=list(BACKENDS)
    )
    p.add_argument("--rho", type=float, default=0.5)
    p.add_argument("--kappa", type=float, default=1.5)
    p.add_argument(
        "--method",
        default="camegrad",
        choices=list(METHODS),
        help="the second run's method (the first is the linear-scalarization baseline); "
        "cagrad reads --rho as its c",
    )
    p.add_argument("--nu", type=float, default=0.2)
    p.add_argument(
        "--weights",
        type=lambda s: [float(x) for x in s.split(",")],
        default=None,
        help="comma-separated task weights w_0..w_K (default all ones)",
    )
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--findings", type=int, default=6)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--out", default="runs")
    p.add_argument("--name", default="multitask")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op CPU threads (0: torch's default); one is fastest for this tiny model",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps: expected >= 1")
    if args.tasks < 1:
        p.error("--tasks: expected >= 1 auxiliary head")
    if args.weights is not None and len(args.weights) != args.tasks + 1:
        p.error(f"--weights: expected {args.tasks + 1} weights (report + {args.tasks} heads)")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return _main(args)
    finally:
        torch.set_num_threads(threads)


def _main(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    run_dir = os.path.join(args.out, args.name)
    os.makedirs(run_dir, exist_ok=True)
    data = SyntheticRRG(args.seed, findings=args.findings)
    val = data.batch(-1, 512, device)  # a fixed validation set (index -1: never a training batch)

    t0 = time.perf_counter()
    runs = {run: train(args, run, data, val) for run in ("linear", run_name(args.method))}
    total = time.perf_counter() - t0

    names = task_names(args.tasks)
    plots = {
        "loss_curves": "loss_curves.png",
        "cosine_hist": "cosine_hist.png",
        "time_split": "time_split.png",
    }
    plot_losses(runs, names, os.path.join(run_dir, plots["loss_curves"]))
    plot_cosines(runs, os.path.join(run_dir, plots["cosine_hist"]))
    plot_times(runs, os.path.join(run_dir, plots["time_split"]))

    metrics = {
        "config": {k: v for k, v in vars(args).items()},
        "tasks": names,
        "shared_numel": sum(p.numel() for p in Encoder().parameters()),
        "total_wall_s": total,
        "torch": torch.__version__,
        "plots": plots,
        "runs": runs,
    }
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        json.dump(strict_json(metrics), f, indent=1, allow_nan=False)

    print(
        f"\n== {args.steps} steps, n = {len(names)} tasks, d = {metrics['shared_numel']} shared "
        f"parameters, backend {runs['linear']['backend']}, {total:.1f} s total =="
    )
    print(f"{'final val loss':<22}" + "".join(f"{n_[:14]:>16}" for n_ in names))
    for method, rec in runs.items():
        print(f"{LABELS[method]:<22}" + "".join(f"{l:>16.4f}" for l in rec["final_val_loss"]))
    for method, rec in runs.items():
        t = rec["time_ms"]
        split = ", ".join(f"{p} {t[p]:.2f}" for p in t)
        print(
            f"{LABELS[method]}: negative-cosine ratio {100 * rec['mean_negative_ratio']:.1f}% "
            f"(mean cos {rec['mean_cosine']:.3f}); ms/step: {split}"
        )
    print(f"wrote {run_dir}/metrics.json and " + ", ".join(plots.values()))
    return metrics


if __name__ == "__main__":
    main()
