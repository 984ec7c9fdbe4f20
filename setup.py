"""Build of camegrad_kernels and its C++/CUDA extensions (torch.utils.cpp_extension).

Install with ``pip install --no-build-isolation -e .`` after installing torch:
the extensions compile against the torch already in the environment, which is
why torch is neither a build nor an install requirement here.

Environment knobs:
    FORCE_CUDA=1                  build camegrad_kernels._cuda even without a CUDA torch/nvcc
    CAMEGRAD_SKIP_CUDA_BUILD=1    never build camegrad_kernels._cuda
    TORCH_CUDA_ARCH_LIST          CUDA architectures (default CUDA_ARCH_LIST_DEFAULT below:
                                  cubins for sm_80/sm_86/sm_90, plus compute_90 PTX that the
                                  driver JIT-compiles on newer GPUs, e.g. sm_100/sm_120)
    MAX_JOBS                      parallel compile jobs (read by torch's ninja build)
"""

import glob
import os
import sys

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))

# The default TORCH_CUDA_ARCH_LIST, and the one source of it: .ci/check_cuda.sh and
# .ci/check_cuda_build.sh read this line (keep it a one-line string literal).
CUDA_ARCH_LIST_DEFAULT = "8.0;8.6;9.0+PTX"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


# The C++ standard is left to torch (it picks what its headers need); the code is C++17.
# Apple clang has no -fopenmp: there the kernels build single threaded.
openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
ext_modules = [
    CppExtension(
        "camegrad_kernels._C",
        ["csrc/ops.cpp"] + _rel(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))),
        extra_compile_args={"cxx": ["-O3"] + openmp},
        extra_link_args=openmp,
    )
]

cuda_sources = _rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
cuda_binding = os.path.join(ROOT, "csrc", "cuda", "binding.cpp")
want_cuda = _env_flag("FORCE_CUDA") or (torch.version.cuda is not None and CUDA_HOME is not None)
if want_cuda and not _env_flag("CAMEGRAD_SKIP_CUDA_BUILD") and cuda_sources:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", CUDA_ARCH_LIST_DEFAULT)
    ext_modules.append(
        CUDAExtension(
            "camegrad_kernels._cuda",
            cuda_sources + (_rel([cuda_binding]) if os.path.exists(cuda_binding) else []),
            include_dirs=[os.path.join(ROOT, "csrc", "cpu")],  # solver.h, shared with the CPU build
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]},
        )
    )

setup(
    name="camegrad_kernels",
    version="0.1.0",
    description="Fused, exact, host-sync-free CAME-Grad multi-task gradient kernels",
    packages=find_packages(include=["camegrad_kernels*"]),
    python_requires=">=3.9",
    install_requires=["numpy"],
    extras_require={
        "triton": ["triton>=3.6,<3.10"],  # checked: 3.6.0-3.9.0 (.ci/check_triton_aot.py)
        "test": ["pytest", "scipy", "numpy", "matplotlib", "tqdm", "torchjd[full]==0.18.0"],
        "examples": ["matplotlib", "tqdm"],
        "bench": ["matplotlib", "pytest-benchmark", "scipy"],
    },
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtension},
    zip_safe=False,
)
