"""Launch options that every Triton kernel of the package passes explicitly.

FP_FUSION (``enable_fp_fusion`` of each launch) is False: every multiply and add
rounds as written. With fusion on, whether ``a * b + c`` becomes one FMA is up
to LLVM's and ptxas' pattern matching, so the bits would move with the triton
release, the ptxas version bundled with it and unrelated edits of a kernel; and
triton's default itself changes (on up to 3.9, off from 3.10, with a warning in
3.9 when it is left unset). Off, "same input, same bits" depends on the kernel
source only, and the GPU rounds as the interpreter (numpy, no contraction) and
the torch reference's separate ops do. It costs nothing that matters: the Gram
is an fp64 ``tl.dot``, compiled to fp64 mma (mma.sync m8n8k4 f64 on sm_80/86/90,
the same PTX either way), the combine is bound by memory bandwidth and the
solves by latency, not by flop count.
"""

FP_FUSION = False
