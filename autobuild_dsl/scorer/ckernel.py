"""The two-slot GATv2 layer's element-wise work as one C loop forward and one backward.

Between its matmuls a layer is ~10 element-wise tensor passes forward and ~14 backward on
[nodes, hidden]; on CPU each pass streams the whole tensor through memory, so an epoch is
bound by passes, not arithmetic. Here each direction is one pass over the rows of chained
graphs (a node's predecessor is the row before it). The C source is compiled once per
machine with the system C compiler (no torch headers: under a second) into a cache folder
and called through ctypes; without a compiler, or when ABC_NO_CKERNEL is set, fastlayer.py
keeps its tensor-op path, which gives the same numbers within float rounding
(tests/test_scorer_ckernel.py compares them).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from autobuild_dsl.io import cache_dir

# Hidden sizes above this take the tensor-op path (the C loop keeps one row on the stack).
MAX_DIM = 512
MODES = {"plain": 0, "relu": 1, "relu_residual": 2}

_SOURCE = r"""
#include <math.h>
#define MAX_DIM 512
static inline float lrelu(float x, float s) { return x > 0.f ? x : x * s; }

/* both: [n, 2d] (source | target); h: [n, d] (residual input, mode 2 only). With a pool
   table (pt not NULL), row i's output is also added to pt[pb[i], pc:pc + d] (row width
   pw): the graph sums of the hop. */
void gat_forward(long n, int d, const float *restrict both, const float *restrict h,
                 const float *restrict att, const float *restrict has,
                 const float *restrict bias, float slope, int mode, float *out,
                 float *relu, float *restrict w, const long *restrict pb,
                 float *restrict pt, long pw, long pc) {
    for (long i = 0; i < n; i++) {
        const float *s = both + i * 2 * d, *t = s + d;
        const float *p = (i > 0 && has[i] != 0.f) ? both + (i - 1) * 2 * d : s;
        float acc = 0.f;
        #pragma omp simd reduction(+:acc)
        for (int k = 0; k < d; k++)
            acc += att[k] * (lrelu(p[k] + t[k], slope) - lrelu(s[k] + t[k], slope));
        float wi = has[i] / (1.f + expf(-acc));
        w[i] = wi;
        float *o = out + i * d, *r = relu + i * d;
        const float *hi = h + i * d;
        for (int k = 0; k < d; k++) {
            float v = s[k] + wi * (p[k] - s[k]) + bias[k];
            if (mode == 0) { o[k] = v; continue; }
            v = v > 0.f ? v : 0.f;
            r[k] = v;
            o[k] = mode == 2 ? v + hi[k] : v;
        }
        if (pt) {
            float *dst = pt + pb[i] * pw + pc;
            for (int k = 0; k < d; k++) dst[k] += o[k];
        }
    }
}

/* grad_both: [n, 2d] out; grad_att, grad_bias: [d], zeroed by the caller. Row i's
   predecessor message gradient is added to row i - 1's source gradient. The output's
   gradient is grad (NULL: none) plus, with a pool table, pt[pb[i], pc:pc + d]; with
   gfull it is written there (the residual skip needs it). */
void gat_backward(long n, int d, const float *restrict both, const float *restrict w,
                  const float *restrict relu, const float *restrict grad,
                  const float *restrict att, const float *restrict has, float slope,
                  int mode, float *restrict grad_both, float *restrict grad_att,
                  float *restrict grad_bias, const long *restrict pb,
                  const float *restrict pt, long pw, long pc, float *restrict gfull) {
    float gin[MAX_DIM];
    float gp[MAX_DIM], gm[MAX_DIM];
    for (long i = 0; i < n; i++) {
        const float *s = both + i * 2 * d, *t = s + d;
        const float *p = (i > 0 && has[i] != 0.f) ? both + (i - 1) * 2 * d : s;
        const float *r = relu + i * d;
        for (int k = 0; k < d; k++) gin[k] = grad ? grad[i * d + k] : 0.f;
        if (pt) {
            const float *src = pt + pb[i] * pw + pc;
            for (int k = 0; k < d; k++) gin[k] += src[k];
        }
        if (gfull)
            for (int k = 0; k < d; k++) gfull[i * d + k] = gin[k];
        float wi = w[i], dot = 0.f;
        for (int k = 0; k < d; k++) {
            gp[k] = (mode == 0 || r[k] > 0.f) ? gin[k] : 0.f;
            dot += gp[k] * (p[k] - s[k]);
        }
        float gl = dot * (wi - wi * wi);
        float *gs = grad_both + i * 2 * d, *gt = gs + d;
        for (int k = 0; k < d; k++) {
            float zs = s[k] + t[k], zo = p[k] + t[k];
            grad_att[k] += gl * (lrelu(zo, slope) - lrelu(zs, slope));
            grad_bias[k] += gp[k];
            float ga = gl * att[k];
            float gself = zs > 0.f ? ga : ga * slope;
            float gother = zo > 0.f ? ga : ga * slope;
            gm[k] = gother + gp[k] * wi;
            gt[k] = gother - gself;
            gs[k] = gp[k] - gm[k] + gt[k];
        }
        if (i > 0) {
            float *prev = grad_both + (i - 1) * 2 * d;
            for (int k = 0; k < d; k++) prev[k] += gm[k];
        }
    }
}
"""


def _build() -> ctypes.CDLL | None:
    """Compile (once per source and machine) and load the kernels; None when impossible."""
    if os.environ.get("ABC_NO_CKERNEL"):
        return None
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None
    # -march=native: the library is keyed by the machine, so a cache on a shared home
    # folder never hands one CPU's build to another.
    key = hashlib.sha256(
        "\0".join([_SOURCE, platform.machine(), platform.processor(), _cpu_flags()]).encode()
    ).hexdigest()[:16]
    target = cache_dir("ABC_KERNEL_CACHE", "kernels") / f"gat2slot-{key}.so"
    try:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
                src = Path(scratch) / "gat2slot.c"
                src.write_text(_SOURCE)
                built = Path(scratch) / target.name
                flags = ["-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC"]
                subprocess.run(
                    [compiler, *flags, "-o", str(built), str(src), "-lm"],
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
                os.replace(built, target)  # atomic: a concurrent builder sees all or none
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError):
        return None
    vp, i64, i32, f32 = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float
    pool = [vp, vp, i64, i64]
    lib.gat_forward.argtypes = [i64, i32, vp, vp, vp, vp, vp, f32, i32, vp, vp, vp, *pool]
    lib.gat_backward.argtypes = [
        i64, i32, vp, vp, vp, vp, vp, vp, f32, i32, vp, vp, vp, *pool, vp
    ]  # fmt: skip
    lib.gat_forward.restype = lib.gat_backward.restype = None
    return lib


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return ""


_LIB: ctypes.CDLL | None = None
_TRIED = False


def library() -> ctypes.CDLL | None:
    global _LIB, _TRIED
    if not _TRIED:
        _TRIED = True
        _LIB = _build()
    return _LIB


def applies(h: torch.Tensor, dim: int) -> bool:
    """Whether the C kernels can run this layer (float32 on CPU, small hidden size)."""
    return (
        h.dtype == torch.float32
        and h.device.type == "cpu"
        and dim <= MAX_DIM
        and library() is not None
    )


def _ptr(t: torch.Tensor | None) -> int | None:
    if t is None:
        return None
    assert t.is_contiguous() and t.dtype in (torch.float32, torch.int64)
    return t.data_ptr()


@dataclass(frozen=True)
class Pool:
    """Columns [col, col + hidden) of `table` ([graphs, width], contiguous) hold a hop's
    graph sums (forward) or their gradients (backward); `batch`: graph of each node."""

    batch: torch.Tensor
    table: torch.Tensor
    col: int

    def args(self) -> tuple[int | None, int | None, int, int]:
        return _ptr(self.batch), _ptr(self.table), self.table.shape[1], self.col


NO_POOL = (None, None, 0, 0)


def forward(
    both: torch.Tensor,
    h: torch.Tensor,
    att: torch.Tensor,
    has_other: torch.Tensor,
    bias: torch.Tensor,
    slope: float,
    mode: str,
    pool: Pool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output, ReLU output (the output itself unless residual), attention weight); with
    `pool`, the output is also summed per graph into its table."""
    lib = library()
    assert lib is not None
    n, dim = both.shape[0], bias.shape[0]
    h, att, has_other, bias = (t.contiguous() for t in (h, att, has_other, bias))
    out = torch.empty(n, dim)
    relu = torch.empty(n, dim) if mode == "relu_residual" else out
    w = torch.empty(n)
    lib.gat_forward(
        n, dim, _ptr(both), _ptr(h), _ptr(att), _ptr(has_other), _ptr(bias), slope,
        MODES[mode], _ptr(out), _ptr(relu), _ptr(w), *(pool.args() if pool else NO_POOL),
    )  # fmt: skip
    return out, relu, w


def backward(
    both: torch.Tensor,
    w: torch.Tensor,
    relu: torch.Tensor,
    grad: torch.Tensor | None,
    att: torch.Tensor,
    has_other: torch.Tensor,
    slope: float,
    mode: str,
    pool: Pool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gradient of `both`, of the attention vector, of the output bias, of the output).
    The output's gradient is `grad` (None: zero) plus, with `pool`, its graph's row of
    the pooled gradient table."""
    lib = library()
    assert lib is not None
    n, dim = both.shape[0], att.shape[0]
    att, has_other = att.contiguous(), has_other.contiguous()
    grad = None if grad is None else grad.contiguous()
    grad_both = torch.empty(n, 2 * dim)
    grad_att = torch.zeros(dim)
    grad_bias = torch.zeros(dim)
    grad_out = torch.empty(n, dim) if pool is not None or grad is None else grad
    lib.gat_backward(
        n, dim, _ptr(both), _ptr(w), _ptr(relu), _ptr(grad), _ptr(att), _ptr(has_other),
        slope, MODES[mode], _ptr(grad_both), _ptr(grad_att), _ptr(grad_bias),
        *(pool.args() if pool else NO_POOL), _ptr(grad_out) if grad_out is not grad else None,
    )  # fmt: skip
    return grad_both, grad_att, grad_bias, grad_out
