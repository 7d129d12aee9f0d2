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
from collections.abc import Callable
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
#define INLINE static inline __attribute__((always_inline))
static inline float lrelu(float x, float s) { return x > 0.f ? x : x * s; }

/* both: [n, 2d], h @ [W_l; W_r]^T without the biases: row i gets bl | br added here, in
   place, before it is read (row i - 1, the predecessor, already has them). h: [n, d]
   (residual input, mode 2 only). With a pool table (pt not NULL), row i's output is also
   added to pt[pb[i], pc:pc + d] (row width pw): the graph sums of the hop. Modes are
   compile-time constants in each instance, so the inner loops vectorise. */
INLINE void forward_rows(long n, const int d, float *restrict both, const float *restrict h,
                         const float *restrict att, const float *restrict has,
                         const float *restrict bias, const float *restrict bl,
                         const float *restrict br, float slope, const int mode,
                         float *restrict out, float *restrict relu, float *restrict w,
                         const long *restrict pb, float *restrict pt, long pw, long pc) {
    for (long i = 0; i < n; i++) {
        float *s = both + i * 2 * d, *t = s + d;
        #pragma omp simd
        for (int k = 0; k < d; k++) { s[k] += bl[k]; t[k] += br[k]; }
        const float *p = (i > 0 && has[i] != 0.f) ? both + (i - 1) * 2 * d : s;
        float acc = 0.f;
        #pragma omp simd reduction(+:acc)
        for (int k = 0; k < d; k++)
            acc += att[k] * (lrelu(p[k] + t[k], slope) - lrelu(s[k] + t[k], slope));
        float wi = has[i] / (1.f + expf(-acc));
        w[i] = wi;
        float *o = out + i * d;
        if (mode == 0) {
            #pragma omp simd
            for (int k = 0; k < d; k++) o[k] = s[k] + wi * (p[k] - s[k]) + bias[k];
        } else if (mode == 1) {
            #pragma omp simd
            for (int k = 0; k < d; k++) {
                float v = s[k] + wi * (p[k] - s[k]) + bias[k];
                o[k] = v > 0.f ? v : 0.f;
            }
        } else {
            float *r = relu + i * d;
            const float *hi = h + i * d;
            #pragma omp simd
            for (int k = 0; k < d; k++) {
                float v = s[k] + wi * (p[k] - s[k]) + bias[k];
                v = v > 0.f ? v : 0.f;
                r[k] = v;
                o[k] = v + hi[k];
            }
        }
        if (pt) {
            float *dst = pt + pb[i] * pw + pc;
            #pragma omp simd
            for (int k = 0; k < d; k++) dst[k] += o[k];
        }
    }
}

void gat_forward(long n, int d, float *both, const float *h, const float *att,
                 const float *has, const float *bias, const float *bl, const float *br,
                 float slope, int mode, float *out, float *relu, float *w, const long *pb,
                 float *pt, long pw, long pc) {
#define FWD(D, M) forward_rows(n, D, both, h, att, has, bias, bl, br, slope, M, out, relu, \
                                  w, pb, pt, pw, pc)
    /* hidden 32 (the default) with its width a constant: unrolled, sums in registers */
    if (d == 32) {
        if (mode == 0) FWD(32, 0); else if (mode == 1) FWD(32, 1); else FWD(32, 2);
    } else {
        if (mode == 0) FWD(d, 0); else if (mode == 1) FWD(d, 1); else FWD(d, 2);
    }
#undef FWD
}

/* grad_both: [n, 2d] out; grad_att, grad_bias, grad_bb ([2d]: the gradients of bl | br):
   zeroed by the caller. Row i's predecessor message gradient is added to row i - 1's
   source gradient. The output's gradient is grad (NULL: none) plus, with a pool table,
   pt[pb[i], pc:pc + d]; with gfull it is written there (the residual skip needs it). */
INLINE void backward_rows(long n, const int d, const float *restrict both, const float *restrict w,
                          const float *restrict relu, const float *restrict grad,
                          const float *restrict att, const float *restrict has, float slope,
                          const int mode, float *restrict grad_both, float *restrict grad_att,
                          float *restrict grad_bias, float *restrict grad_bb,
                          const long *restrict pb, const float *restrict pt, long pw, long pc,
                          float *restrict gfull) {
    float gin[MAX_DIM], gp[MAX_DIM], gm[MAX_DIM];
    float *restrict gbl = grad_bb, *restrict gbr = grad_bb + d;
    for (long i = 0; i < n; i++) {
        const float *s = both + i * 2 * d, *t = s + d;
        const float *p = (i > 0 && has[i] != 0.f) ? both + (i - 1) * 2 * d : s;
        const float *r = relu + i * d;
        if (grad) {
            const float *gi = grad + i * d;
            #pragma omp simd
            for (int k = 0; k < d; k++) gin[k] = gi[k];
        } else {
            for (int k = 0; k < d; k++) gin[k] = 0.f;
        }
        if (pt) {
            const float *src = pt + pb[i] * pw + pc;
            #pragma omp simd
            for (int k = 0; k < d; k++) gin[k] += src[k];
        }
        if (gfull) {
            float *gf = gfull + i * d;
            #pragma omp simd
            for (int k = 0; k < d; k++) gf[k] = gin[k];
        }
        float wi = w[i], dot = 0.f;
        #pragma omp simd reduction(+:dot)
        for (int k = 0; k < d; k++) {
            gp[k] = (mode == 0 || r[k] > 0.f) ? gin[k] : 0.f;
            dot += gp[k] * (p[k] - s[k]);
        }
        float gl = dot * (wi - wi * wi);
        float *gs = grad_both + i * 2 * d, *gt = gs + d;
        #pragma omp simd
        for (int k = 0; k < d; k++) {
            float zs = s[k] + t[k], zo = p[k] + t[k];
            grad_att[k] += gl * (lrelu(zo, slope) - lrelu(zs, slope));
            grad_bias[k] += gp[k];
            float ga = gl * att[k];
            float gself = zs > 0.f ? ga : ga * slope;
            float gother = zo > 0.f ? ga : ga * slope;
            float m = gother + gp[k] * wi;
            float tk = gother - gself;
            gm[k] = m;
            gt[k] = tk;
            gs[k] = gp[k] - m + tk;
            gbl[k] += gp[k] - m + tk;
            gbr[k] += tk;
        }
        if (i > 0) {
            float *prev = grad_both + (i - 1) * 2 * d;
            #pragma omp simd
            for (int k = 0; k < d; k++) { prev[k] += gm[k]; gbl[k] += gm[k]; }
        }
    }
}

void gat_backward(long n, int d, const float *both, const float *w, const float *relu,
                  const float *grad, const float *att, const float *has, float slope,
                  int mode, float *grad_both, float *grad_att, float *grad_bias,
                  float *grad_bb, const long *pb, const float *pt, long pw, long pc,
                  float *gfull) {
#define BWD(D, M) backward_rows(n, D, both, w, relu, grad, att, has, slope, M, grad_both, \
                                   grad_att, grad_bias, grad_bb, pb, pt, pw, pc, gfull)
    if (d == 32) {
        if (mode == 0) BWD(32, 0); else BWD(32, 1);
    } else {
        if (mode == 0) BWD(d, 0); else BWD(d, 1);
    }
#undef BWD
}
"""


def compile_library(source: str, stem: str) -> ctypes.CDLL | None:
    """Compile C `source` (once per source and machine, into the kernel cache) and load
    it; None without a compiler, when it fails, or when ABC_NO_CKERNEL is set."""
    if os.environ.get("ABC_NO_CKERNEL"):
        return None
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None
    # -march=native: the library is keyed by the machine, so a cache on a shared home
    # folder never hands one CPU's build to another.
    key = hashlib.sha256(
        "\0".join([source, platform.machine(), platform.processor(), _cpu_flags()]).encode()
    ).hexdigest()[:16]
    target = cache_dir("ABC_KERNEL_CACHE", "kernels") / f"{stem}-{key}.so"
    try:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
                src = Path(scratch) / f"{stem}.c"
                src.write_text(source)
                built = Path(scratch) / target.name
                flags = ["-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC"]
                subprocess.run(
                    [compiler, *flags, "-o", str(built), str(src), "-lm"],
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
                os.replace(built, target)  # atomic: a concurrent builder sees all or none
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError):
        return None


def _build() -> ctypes.CDLL | None:
    """Compile (once per source and machine) and load the kernels; None when impossible."""
    lib = compile_library(_SOURCE, "gat2slot")
    if lib is None:
        return None
    vp, i64, i32, f32 = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float
    pool = [vp, vp, i64, i64]
    lib.gat_forward.argtypes = [i64, i32, vp, vp, vp, vp, vp, vp, vp, f32, i32, vp, vp, vp, *pool]
    lib.gat_backward.argtypes = [
        i64, i32, vp, vp, vp, vp, vp, vp, f32, i32, vp, vp, vp, vp, *pool, vp
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


# Each library, built (or found missing) once per process: stem -> library or None.
_LOADED: dict[str, ctypes.CDLL | None] = {}


def load_once(stem: str, build: Callable[[], ctypes.CDLL | None]) -> ctypes.CDLL | None:
    """`build()`'s library, called the first time `stem` is asked for only."""
    if stem not in _LOADED:
        _LOADED[stem] = build()
    return _LOADED[stem]


def library() -> ctypes.CDLL | None:
    return load_once("gat2slot", _build)


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
    bias_both: torch.Tensor,
    slope: float,
    mode: str,
    pool: Pool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output, ReLU output (the output itself unless residual), attention weight).
    `both` is h @ [W_l; W_r]^T without biases: the kernel adds `bias_both` (b_l | b_r)
    to it in place (one pass less than addmm's copy of the broadcast bias). With `pool`,
    the output is also summed per graph into its table."""
    lib = library()
    assert lib is not None and both.is_contiguous()
    n, dim = both.shape[0], bias.shape[0]
    h, att, has_other, bias, bias_both = (
        t.contiguous() for t in (h, att, has_other, bias, bias_both)
    )
    out = torch.empty(n, dim)
    relu = torch.empty(n, dim) if mode == "relu_residual" else out
    w = torch.empty(n)
    bb = _ptr(bias_both)
    assert bb is not None and bias_both.dtype == torch.float32
    lib.gat_forward(
        n, dim, both.data_ptr(), _ptr(h), _ptr(att), _ptr(has_other), _ptr(bias), bb,
        bb + 4 * dim, slope, MODES[mode], out.data_ptr(), relu.data_ptr(), w.data_ptr(),
        *(pool.args() if pool else NO_POOL),
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gradient of `both`, of the attention vector, of the output bias, of the output,
    of `bias_both`). The output's gradient is `grad` (None: zero) plus, with `pool`, its
    graph's row of the pooled gradient table."""
    lib = library()
    assert lib is not None
    n, dim = both.shape[0], att.shape[0]
    att, has_other = att.contiguous(), has_other.contiguous()
    grad = None if grad is None else grad.contiguous()
    grad_both = torch.empty(n, 2 * dim)
    # One zeroed buffer for the three sums the kernel accumulates.
    sums = torch.zeros(4 * dim)
    grad_att, grad_bias, grad_bias_both = sums.split([dim, dim, 2 * dim])
    grad_out = torch.empty(n, dim) if pool is not None or grad is None else grad
    lib.gat_backward(
        n, dim, _ptr(both), _ptr(w), _ptr(relu), _ptr(grad), _ptr(att), _ptr(has_other),
        slope, MODES[mode], grad_both.data_ptr(), grad_att.data_ptr(), grad_bias.data_ptr(),
        grad_bias_both.data_ptr(), *(pool.args() if pool else NO_POOL),
        _ptr(grad_out) if grad_out is not grad else None,
    )  # fmt: skip
    return grad_both, grad_att, grad_bias, grad_out, grad_bias_both
