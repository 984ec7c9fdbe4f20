"""A workaround for triton 3.6's interpreter (TRITON_INTERPRET=1) under numpy >= 2.4.

triton 3.6's interpreter turns a scalar into a Python int with
``int(self.handle.data)``, the data being a 1-element 1-d array; numpy 2.4
made that a TypeError ("only 0-dimensional arrays can be converted to Python
scalars", deprecated since numpy 1.25). So every loop whose bound is a runtime
scalar (``for k in range(n)``: the combine, the solves, PCGrad) fails under
the interpreter there. triton 3.7 reads ``int(self.handle.data.squeeze())``;
this installs the same on 3.6, and only where the installed interpreter still
has the old line (compiled kernels are not touched).
"""

from __future__ import annotations

import inspect


def patch() -> None:
    try:
        from triton.runtime import interpreter
    except ImportError:  # no interpreter in this triton: nothing to patch
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_camegrad_index_patch", False):
        return
    try:
        source = inspect.getsource(original)
    except (OSError, TypeError):
        return
    if "int(self.handle.data))" not in source:
        return  # fixed in this triton

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched._camegrad_index_patch = True
    interpreter._patch_lang_tensor = patched
