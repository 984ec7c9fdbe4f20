"""The generic harness of bench_step.py: machine info, timers, tolerance, JSON."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import scipy
import torch

import camegrad_kernels as cg
from camegrad_kernels import api, backends, ops

ROOT = Path(__file__).resolve().parent.parent

# Relative L2 error ||y - y_ref|| / ||y_ref|| allowed against the float64 reference:
# max(BASE_TOL[dtype], 4 sqrt(d) eps_fp32). The base values are tests/helpers.py's
# UPDATE_TOL (output rounding, half-precision intermediates of the naive peer). The
# second term admits a correct fp32-accumulating Gram: a length-d fp32 dot product
# is off by ~sqrt(d) eps (probabilistic rounding bound, Higham & Mary 2019), and
# torch's CPU G @ G.T does reach 1.6e-3 relative error in M at n=4, d=1e7.
# A wrong implementation is off by 1e-2..1. Every row reports its rel_err anyway.
BASE_TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2, torch.float64: 1e-9}
ACC_TOL_FACTOR = 4.0


def tolerance(dtype: torch.dtype, d: int) -> float:
    acc_eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    return max(BASE_TOL[dtype], ACC_TOL_FACTOR * math.sqrt(d) * acc_eps)


def tolerance_settings() -> dict:
    """How :func:`tolerance` is computed, for the JSON's settings."""
    return {
        "formula": f"max(base[dtype], {ACC_TOL_FACTOR:g} * sqrt(d) * eps(fp32 accumulation))",
        "base": {dtype_name(k): v for k, v in BASE_TOL.items()},
    }


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# --------------------------------------------------------------------------- machine


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def ram_bytes() -> int:
    m = re.search(r"MemTotal:\s+(\d+) kB", _read("/proc/meminfo"))
    return int(m.group(1)) * 1024 if m else 8 << 30


def available_ram_bytes() -> int:
    m = re.search(r"MemAvailable:\s+(\d+) kB", _read("/proc/meminfo"))
    return int(m.group(1)) * 1024 if m else ram_bytes()


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda-" + slug(torch.cuda.get_device_name(device).replace("NVIDIA", ""))
    return f"cpu-{slug(cpu_model())}-{os.cpu_count()}c"


def memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return ram_bytes()


def git_commit() -> str | None:
    def git(*args: str) -> str:
        cmd = ["git", "-C", str(ROOT), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
        return head + ("+dirty" if dirty else "") or None
    except (OSError, subprocess.SubprocessError):
        return None


def safe_available_backends() -> list[str]:
    """api.available_backends(), or the same list built by hand when it raises."""
    try:
        return api.available_backends()
    except Exception as exc:  # noqa: BLE001 - e.g. a backend module not written yet
        names = []
        for name in backends.PRIORITY:
            dev = torch.device("cuda" if name == "cuda" else "cpu")
            # A backend that cannot even say why it is unavailable is left out.
            with contextlib.suppress(Exception):
                if backends.load(name).unavailable_reason(dev, torch.float32) is None:
                    names.append(name)
        print(f"# note: api.available_backends() raised {type(exc).__name__}: {exc}", flush=True)
        return names


def machine_info(device: torch.device) -> dict:
    info = {
        "device": device_name(device),
        "device_type": device.type,
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": round(ram_bytes() / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "camegrad_kernels": getattr(cg, "__version__", None),
        "git_commit": git_commit(),
        "has_cpu_ops": ops.HAS_CPU_OPS,
        "has_cuda_ops": ops.HAS_CUDA_OPS,
        "available_backends": safe_available_backends(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info


# --------------------------------------------------------------------------- timing


class Timer:
    """Wall time of one call: CUDA events on a GPU, time.perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def once(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def summarize(times: list[float], warmup: int) -> dict:
    arr = np.asarray(times, dtype=np.float64)
    return {
        "median": float(np.median(arr)),
        "p10": float(np.percentile(arr, 10)),
        "p90": float(np.percentile(arr, 90)),
        "min": float(arr.min()),
        "mean": float(arr.mean()),
        "repeats": len(times),
        "warmup": warmup,
    }


def measure(
    fn: Callable[[], object],
    timer: Timer,
    repeats: int,
    warmup: int,
    target_s: float,
    max_repeats: int = 1000,
) -> dict:
    """Warm-up, then max(repeats, target_s / t) runs (at most max_repeats)."""
    last = 0.0
    for _ in range(max(warmup, 1)):
        last = timer.once(fn)
    count = repeats
    if last > 0 and target_s > 0:
        count = max(repeats, min(max_repeats, int(target_s / last)))
    return summarize([timer.once(fn) for _ in range(count)], warmup)


def measure_copy(src: torch.Tensor, timer: Timer, repeats: int, warmup: int, target_s: float) -> dict:
    """:func:`measure` of ``dst.copy_(src)`` into a fresh buffer like ``src``."""
    copy = functools.partial(torch.Tensor.copy_, torch.empty_like(src), src)
    return measure(copy, timer, repeats, warmup, target_s)


def large_copy_bandwidth(device: torch.device, timer: Timer, repeats: int, warmup: int,
                         target_s: float) -> dict:
    """Reference copy bandwidth of a large buffer (out of cache)."""
    big = (256 << 20) if device.type == "cpu" else (2 << 30)
    src = torch.ones(big // 4, dtype=torch.float32, device=device)
    t = measure_copy(src, timer, repeats, warmup, target_s)
    return {"bytes_copied": big, "time": t, "gbps": 2 * big / t["median"] / 1e9}


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """||y - ref|| / ||ref|| in float64 (chunked: no [d] float64 copy of y at once)."""
    num = 0.0
    den = 0.0
    step = 1 << 22
    for i in range(0, ref.numel(), step):
        r = ref[i : i + step]
        num += float(((y[i : i + step].to(torch.float64) - r) ** 2).sum())
        den += float((r**2).sum())
    if not math.isfinite(num):
        return math.inf
    return math.sqrt(num) / max(math.sqrt(den), 1e-300)


# --------------------------------------------------------------------------- JSON


def strict_json(value):
    """NaN/Inf -> None, recursively, so the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_json(path: Path, result: dict) -> None:
    with open(path, "w") as f:
        json.dump(strict_json(result), f, indent=1, allow_nan=False, default=str)
