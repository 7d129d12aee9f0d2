"""The C source of cstep.py: an epoch of training steps (forward, loss, backward, AdamW)
on chained graphs, row by row. Kept apart from the Python so each module stays short.

Forward: one pass over the rows does every layer of a row (row i of layer l needs only
row i - 1's source message, computed just before), so a row's activations stay in cache.
Backward: one pass over the rows in reverse; a row's source gradient is complete once the
row after it (its only reader) has been done, so every layer's input gradient and weight
gradients are made from it at once (`pend` carries row i + 1's message gradient).
"""

from autobuild_dsl.scorer.cstep_loss import LOSS_SOURCE

SOURCE = (
    r"""
#include <math.h>
#include <stdlib.h>
#include <string.h>
#define MAXD 64
#define MAXH 256
#define MAXL 16
#define BLOCK 16  /* rows per weight-gradient update */
#define RB 8  /* rows per block of the layers' matmuls */
#define INLINE static inline __attribute__((always_inline))
static inline float lrelu(float x, float s) { return x > 0.f ? x : x * s; }
static inline long up16(long n) { return (n + 15) & ~15L; }

/* C categories, S value slots, F FE width, L layers, d hidden, hh head width, residual,
   the most nodes and graphs in a batch (the workspace is sized for them). */
typedef struct { long C, S, F, L, d, hh, residual, maxn, maxg; } Dims;
typedef struct { double slope, strength, lambda, lr, wd, b1, b2, eps; } Scal;
/* Parameters (or their gradients) as pointers into the flat tensor at the offsets of
   cstep.py: embed, weight, bias; per layer W_l, b_l, W_r, b_r, att, bias; W1 b1 W2 b2 W3 b3 */
typedef struct {
    float *embed, *fw, *fb;
    float *wl[MAXL], *bl[MAXL], *wr[MAXL], *br[MAXL], *att[MAXL], *bias[MAXL];
    float *w1, *b1, *w2, *b2, *w3, *b3;
} Net;

static void net_at(Net *net, float *base, const long *o, long L) {
    net->embed = base + o[0]; net->fw = base + o[1]; net->fb = base + o[2];
    for (long l = 0; l < L; l++) {
        const long *p = o + 3 + 6 * l;
        net->wl[l] = base + p[0]; net->bl[l] = base + p[1]; net->wr[l] = base + p[2];
        net->br[l] = base + p[3]; net->att[l] = base + p[4]; net->bias[l] = base + p[5];
    }
    const long *h = o + 3 + 6 * L;
    net->w1 = base + h[0]; net->b1 = base + h[1]; net->w2 = base + h[2];
    net->b2 = base + h[3]; net->w3 = base + h[4]; net->b3 = base + h[5];
}

/* Every buffer a batch needs, carved from one float array. */
typedef struct {
    float *table, *gtable, *wt[MAXL], *bcat[MAXL], *raw, *h[MAXL + 1], *both[MAXL], *w[MAXL],
        *r[MAXL], *wg[MAXL], *wh[MAXL], *gwt0, *w1t, *w2t, *pooled, *gpool, *inv, *z1, *z2, *pred, *norms, *gnorms, *pend;
    long *gb, *x;
    unsigned char *has;
    double *rank;
    long width;
} Work;

static long work_layout(const Dims *D, float *base, Work *W) {
    long n = D->maxn, G = D->maxg, d = D->d, C = D->C, off = 0;
    float *spare = 0;
#define TAKE(ptr, count) do { if (base) (ptr) = base + off; off += up16(count); } while (0)
    TAKE(W->table, C * D->S); TAKE(W->gtable, C * D->S); TAKE(W->raw, n * C);
    TAKE(W->h[0], n * C); TAKE(W->gwt0, C * 2 * d);
    for (long l = 0; l < D->L; l++) {
        long din = l ? d : C;
        TAKE(W->wt[l], din * 2 * d); TAKE(W->bcat[l], 2 * d); TAKE(W->h[l + 1], n * d);
        TAKE(W->both[l], n * 2 * d); TAKE(W->w[l], n); TAKE(W->r[l], n * d);
        TAKE(W->wg[l], BLOCK * 2 * d); TAKE(W->wh[l], BLOCK * din);
    }
    long width = C + D->L * d;
    TAKE(W->pooled, G * width); TAKE(W->gpool, G * width); TAKE(W->inv, G);
    TAKE(W->w1t, d * D->hh); TAKE(W->w2t, D->hh * D->hh); TAKE(W->z1, G * D->hh); TAKE(W->z2, G * D->hh); TAKE(W->pred, G);
    TAKE(W->norms, (D->L + 1) * G); TAKE(W->gnorms, (D->L + 1) * G); TAKE(W->pend, D->L * d);
    TAKE(spare, 2 * n);  /* longs: each node's graph in the batch */
    if (base) { W->gb = (long *)spare; W->width = width; }
    TAKE(spare, 2 * n * C);  /* longs: the batch's feature codes */
    if (base) W->x = (long *)spare;
    TAKE(spare, n / 4 + 1);  /* bytes: whether each row has a predecessor */
    if (base) W->has = (unsigned char *)spare;
    TAKE(spare, 2 * 12 * G);  /* doubles: the soft rank's scratch */
    if (base) W->rank = (double *)spare;
#undef TAKE
    return off;
}

long cstep_work_floats(const long *dims) { return work_layout((const Dims *)dims, 0, 0); }

/* The FE-MLP's value table, each layer's [W_l; W_r]^T ([din][2d]) and [b_l | b_r]. */
static void prepare(const Dims *D, const Net *P, Work *W) {
    long C = D->C, S = D->S, F = D->F, d = D->d;
    for (long c = 0; c < C; c++)
        for (long v = 0; v < S; v++) {
            const float *e = P->embed + (c * S + v) * F;
            float a = P->fb[c];
            for (long f = 0; f < F; f++) a += e[f] * P->fw[c * F + f];
            W->table[c * S + v] = a;
        }
    for (long j = 0; j < D->hh; j++) {  /* the head's first two weights, transposed */
        for (long k = 0; k < d; k++) W->w1t[k * D->hh + j] = P->w1[j * d + k];
        for (long k = 0; k < D->hh; k++) W->w2t[k * D->hh + j] = P->w2[j * D->hh + k];
    }
    for (long l = 0; l < D->L; l++) {
        long din = l ? d : C;
        for (long j = 0; j < d; j++) {
            for (long k = 0; k < din; k++) {
                W->wt[l][k * 2 * d + j] = P->wl[l][j * din + k];
                W->wt[l][k * 2 * d + d + j] = P->wr[l][j * din + k];
            }
            W->bcat[l][j] = P->bl[l][j];
            W->bcat[l][d + j] = P->br[l][j];
        }
    }
}

/* ---------------------------------------------------------------- forward */

/* Row i's attention over (self, predecessor row), given its both = [source | target]:
   ReLU, then the residual skip (h: the layer's input row). */
INLINE void att_fwd(const int d, long i, const float *restrict s, const float *restrict h,
                    const float *restrict att, const float *restrict bias, float has,
                    float slope, int residual, float *restrict out, float *restrict r,
                    float *restrict w) {
    const float *t = s + d, *p = (i > 0 && has != 0.f) ? s - 2 * d : s;
    float a = 0.f;
    #pragma omp simd reduction(+:a)
    for (int k = 0; k < d; k++)
        a += att[k] * (lrelu(p[k] + t[k], slope) - lrelu(s[k] + t[k], slope));
    float wi = has / (1.f + expf(-a));
    w[i] = wi;
    #pragma omp simd
    for (int k = 0; k < d; k++) {
        float v = s[k] + wi * (p[k] - s[k]) + bias[k];
        v = v > 0.f ? v : 0.f;
        r[k] = v;
        out[k] = residual ? v + h[k] : v;
    }
}

/* Rows i0 .. i0 + R - 1 of layer l: both = h [W_l; W_r]^T + [b_l | b_r] for the R rows at
   once (each weight row loaded once, R rows of sums in registers), then each row's
   attention in order (row i reads row i - 1's source). */
INLINE void fwd_block(const int d, const int din, const int R, long i0, long l, int res,
                      const unsigned char *has, float slope, const Net *P, Work *W) {
    const float *restrict wt = W->wt[l], *restrict bcat = W->bcat[l];
    const float *restrict hin = W->h[l] + i0 * din;
    float acc[R][2 * MAXD];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < 2 * d; j++) acc[r][j] = bcat[j];
    for (int k = 0; k < din; k++) {
        const float *restrict row = wt + k * 2 * d;
        for (int r = 0; r < R; r++) {
            const float hk = hin[r * din + k];
            #pragma omp simd
            for (int j = 0; j < 2 * d; j++) acc[r][j] += hk * row[j];
        }
    }
    for (int r = 0; r < R; r++) {
        long i = i0 + r;
        float *s = W->both[l] + i * 2 * d;
        for (int j = 0; j < 2 * d; j++) s[j] = acc[r][j];
        float *out = W->h[l + 1] + i * d, *rr = res ? W->r[l] + i * d : out;
        att_fwd(d, i, s, hin + r * din, P->att[l], P->bias[l], has[i] ? 1.f : 0.f, slope, res,
                out, rr, W->w[l]);
    }
}

/* Rows i0 .. i0 + R - 1 through the FE-MLP and every layer, summed into their graphs. */
INLINE void fwd_group(const int d, const int R, const Dims *D, float slope, long i0,
                      const long *x, const unsigned char *has, const Net *P, Work *W) {
    long C = D->C;
    for (long i = i0; i < i0 + R; i++) {
        float *pool = W->pooled + W->gb[i] * W->width;
        for (long c = 0; c < C; c++) {
            float v = W->table[c * D->S + x[i * C + c]];
            W->raw[i * C + c] = v;
            W->h[0][i * C + c] = fabsf(v);
            pool[c] += fabsf(v);
        }
    }
    for (long l = 0; l < D->L; l++) {
        int res = D->residual && l > 0;
        if (l) fwd_block(d, d, R, i0, l, res, has, slope, P, W);
        else fwd_block(d, (int)C, R, i0, 0, res, has, slope, P, W);
        for (long i = i0; i < i0 + R; i++) {
            float *dst = W->pooled + W->gb[i] * W->width + C + l * d;
            const float *out = W->h[l + 1] + i * d;
            #pragma omp simd
            for (int k = 0; k < d; k++) dst[k] += out[k];
        }
    }
}

INLINE void fwd_rows(const int d, const Dims *D, float slope, long n, const long *x,
                     const unsigned char *has, const Net *P, Work *W) {
    long i0 = 0;
    for (; i0 + RB <= n; i0 += RB) fwd_group(d, RB, D, slope, i0, x, has, P, W);
    for (; i0 < n; i0++) fwd_group(d, 1, D, slope, i0, x, has, P, W);
}

/* The head on each graph's pooled last hop; the L1 norm of every hop's pooled embedding. */
static void head_forward(const Dims *D, long G, const Net *P, Work *W) {
    long d = D->d, hh = D->hh, width = W->width;
    for (long g = 0; g < G; g++) {
        const float *a = W->pooled + g * width + width - d;
        float *z1 = W->z1 + g * hh, *z2 = W->z2 + g * hh;
        /* along the outputs, on the transposed weights: no serial sums */
        for (long j = 0; j < hh; j++) z1[j] = P->b1[j];
        for (long k = 0; k < d; k++)
            for (long j = 0; j < hh; j++) z1[j] += a[k] * W->w1t[k * hh + j];
        for (long j = 0; j < hh; j++) z1[j] = z1[j] > 0.f ? z1[j] : 0.f;
        for (long j = 0; j < hh; j++) z2[j] = P->b2[j];
        for (long k = 0; k < hh; k++)
            for (long j = 0; j < hh; j++) z2[j] += z1[k] * W->w2t[k * hh + j];
        for (long j = 0; j < hh; j++) z2[j] = z2[j] > 0.f ? z2[j] : 0.f;
        float v = P->b3[0];
        for (long k = 0; k < hh; k++) v += P->w3[k] * z2[k];
        W->pred[g] = v;
        for (long h = 0; h <= D->L; h++) {
            long lo = h ? D->C + (h - 1) * d : 0, hi = h ? lo + d : D->C;
            float s = 0.f;
            for (long k = lo; k < hi; k++) s += fabsf(W->pooled[g * width + k]);
            W->norms[h * G + g] = s;
        }
    }
}

"""
    + LOSS_SOURCE
    + r"""
/* ---------------------------------------------------------------- backward */

static void head_backward(const Dims *D, long G, const float *y, const Net *P, Net *Gr,
                          Work *W) {
    long d = D->d, hh = D->hh, width = W->width;
    float gz1[MAXH], gz2[MAXH];
    for (long g = 0; g < G; g++) {
        const float *a = W->pooled + g * width + width - d;
        const float *z1 = W->z1 + g * hh, *z2 = W->z2 + g * hh;
        float gp = 2.f * (W->pred[g] - y[g]) / (float)G;
        Gr->b3[0] += gp;
        for (long k = 0; k < hh; k++) {
            Gr->w3[k] += gp * z2[k];
            gz2[k] = z2[k] > 0.f ? gp * P->w3[k] : 0.f;
            gz1[k] = 0.f;
        }
        for (long j = 0; j < hh; j++) {
            Gr->b2[j] += gz2[j];
            for (long k = 0; k < hh; k++) {
                Gr->w2[j * hh + k] += gz2[j] * z1[k];
                gz1[k] += gz2[j] * P->w2[j * hh + k];
            }
        }
        float *ga = W->gpool + g * width + width - d;
        for (long j = 0; j < hh; j++) {
            float gj = z1[j] > 0.f ? gz1[j] : 0.f;
            Gr->b1[j] += gj;
            for (long k = 0; k < d; k++) {
                Gr->w1[j * d + k] += gj * a[k];
                ga[k] += gj * P->w1[j * d + k];
            }
        }
        float inv = W->inv[g];
        for (long k = 0; k < width; k++) W->gpool[g * width + k] *= inv;
    }
}

/* Row i's attention backward, given its output's gradient: the attention's, biases' and
   (into gs, gt) [source | target] gradients. pend: in, the message gradient row i + 1
   sent to this row's source; out, what this row sends to row i - 1. */
INLINE void att_bwd(const int d, long i, const float *restrict both, float wi,
                    const float *restrict r, float has, const float *restrict att, float slope,
                    const float *restrict gout, float *restrict pend, Net *Gr, long l,
                    float *restrict gs, float *restrict gt) {
    const float *s = both + i * 2 * d, *t = s + d;
    const float *p = (i > 0 && has != 0.f) ? s - 2 * d : s;
    float gp[MAXD], dot = 0.f;
    float *restrict gatt = Gr->att[l], *restrict gbias = Gr->bias[l];
    float *restrict gbl = Gr->bl[l], *restrict gbr = Gr->br[l];
    #pragma omp simd reduction(+:dot)
    for (int k = 0; k < d; k++) {
        gp[k] = r[k] > 0.f ? gout[k] : 0.f;
        dot += gp[k] * (p[k] - s[k]);
    }
    float gl = dot * (wi - wi * wi);
    #pragma omp simd
    for (int k = 0; k < d; k++) {
        float zs = s[k] + t[k], zo = p[k] + t[k];
        gatt[k] += gl * (lrelu(zo, slope) - lrelu(zs, slope));
        gbias[k] += gp[k];
        float ga = gl * att[k];
        float gself = zs > 0.f ? ga : ga * slope, gother = zo > 0.f ? ga : ga * slope;
        float m = gother + gp[k] * wi, tk = gother - gself;
        float own = gp[k] - m + tk;
        gs[k] = own + pend[k];
        gt[k] = tk;
        pend[k] = m;
        /* own, then the message sent back, as ckernel's backward sums them: a dead unit's
           terms cancel exactly there, and Adam would blow up a rounding residue. */
        gbl[k] += own;
        gbl[k] += m;
        gbr[k] += tk;
    }
}

/* Rows i0 .. i0 + R - 1 of layer l backward, last row first. g: in, each row's output
   gradient; out, its input's (without the pooled hop's share). The rows' [gs | gt] and
   inputs are kept in slots kept.. for the weight gradients (wgrad_flush). */
INLINE void bwd_block(const int d, const int din, const int R, long i0, long l, int res,
                      const unsigned char *has, float slope, const Net *P, Net *Gr, Work *W,
                      float (*g)[MAXD], int kept) {
    float gs[R][MAXD], gt[R][MAXD], acc[R][MAXD];
    for (int r = R - 1; r >= 0; r--) {
        long i = i0 + r;
        const float *rr = res ? W->r[l] + i * d : W->h[l + 1] + i * d;
        att_bwd(d, i, W->both[l], W->w[l][i], rr, has[i] ? 1.f : 0.f, P->att[l], slope, g[r],
                W->pend + l * d, Gr, l, gs[r], gt[r]);
    }
    for (int r = 0; r < R; r++) {
        float *wg = W->wg[l] + (kept + r) * 2 * d, *wh = W->wh[l] + (kept + r) * din;
        const float *h = W->h[l] + (i0 + r) * din;
        for (int j = 0; j < d; j++) { wg[j] = gs[r][j]; wg[d + j] = gt[r][j]; }
        for (int k = 0; k < din; k++) wh[k] = h[k];
        for (int k = 0; k < din; k++) acc[r][k] = res ? g[r][k] : 0.f;
    }
    if (l == 0) {  /* a few inputs: a dot with [gs | gt] each, on the transposed weights */
        for (int r = 0; r < R; r++) {
            const float *wg = W->wg[0] + (kept + r) * 2 * d;
            for (int c = 0; c < din; c++) {
                const float *restrict wt = W->wt[0] + c * 2 * d;
                float sum = 0.f;
                #pragma omp simd reduction(+:sum)
                for (int j = 0; j < 2 * d; j++) sum += wt[j] * wg[j];
                g[r][c] = sum;
            }
        }
        return;
    }
    for (int j = 0; j < d; j++) {
        const float *restrict ml = P->wl[l] + j * din, *restrict mr = P->wr[l] + j * din;
        for (int r = 0; r < R; r++) {
            const float a = gs[r][j], b = gt[r][j];
            #pragma omp simd
            for (int k = 0; k < din; k++) {  /* two statements: two FMAs */
                acc[r][k] += a * ml[k];
                acc[r][k] += b * mr[k];
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int k = 0; k < din; k++) g[r][k] = acc[r][k];
}

/* [W_l; W_r] gradient += the kept rows' [gs | gt]^T @ h, four weight rows at a time in
   registers (each kept input row loaded once per four). */
INLINE void wgrad_flush(const int d, int rows, const float *restrict wg,
                        const float *restrict wh, float *restrict gwl, float *restrict gwr) {
    for (int j0 = 0; j0 < 2 * d; j0 += 4) {
        const int nj = 2 * d - j0 < 4 ? 2 * d - j0 : 4;
        float acc[4][MAXD];
        for (int jj = 0; jj < nj; jj++) {
            int j = j0 + jj;
            const float *src = j < d ? gwl + j * d : gwr + (j - d) * d;
            for (int k = 0; k < d; k++) acc[jj][k] = src[k];
        }
        for (int b = 0; b < rows; b++) {
            const float *restrict h = wh + b * d, *restrict a = wg + b * 2 * d + j0;
            for (int jj = 0; jj < nj; jj++) {
                #pragma omp simd
                for (int k = 0; k < d; k++) acc[jj][k] += a[jj] * h[k];
            }
        }
        for (int jj = 0; jj < nj; jj++) {
            int j = j0 + jj;
            float *dst = j < d ? gwl + j * d : gwr + (j - d) * d;
            for (int k = 0; k < d; k++) dst[k] = acc[jj][k];
        }
    }
}

/* Layer 0 (a few inputs): its gradient kept transposed, [inputs][2d], summed over the
   kept rows along the outputs; added to W_l, W_r at the end of the batch. */
INLINE void wgrad_flush0(const int d, int din, int rows, const float *restrict wg,
                         const float *restrict wh, float *restrict gwt) {
    for (int c = 0; c < din; c++) {
        float acc[2 * MAXD], *restrict dst = gwt + c * 2 * d;
        for (int j = 0; j < 2 * d; j++) acc[j] = dst[j];
        for (int b = 0; b < rows; b++) {
            const float hc = wh[b * din + c], *restrict a = wg + b * 2 * d;
            #pragma omp simd
            for (int j = 0; j < 2 * d; j++) acc[j] += hc * a[j];
        }
        for (int j = 0; j < 2 * d; j++) dst[j] = acc[j];
    }
}

INLINE void flush_all(const int d, const Dims *D, int rows, Net *Gr, Work *W) {
    wgrad_flush0(d, (int)D->C, rows, W->wg[0], W->wh[0], W->gwt0);
    for (long l = 1; l < D->L; l++)
        wgrad_flush(d, rows, W->wg[l], W->wh[l], Gr->wl[l], Gr->wr[l]);
}

/* Rows i0 .. i0 + R - 1 back through every layer and the FE-MLP's abs into the value
   table's gradient; returns the weight-gradient slots in use. */
INLINE int bwd_group(const int d, const int R, const Dims *D, float slope, long i0,
                     const long *x, const unsigned char *has, const Net *P, Net *Gr, Work *W,
                     int kept) {
    long C = D->C, L = D->L, width = W->width;
    float g[R][MAXD];
    if (kept + R > BLOCK) { flush_all(d, D, kept, Gr, W); kept = 0; }
    for (int r = 0; r < R; r++) {
        const float *gp = W->gpool + W->gb[i0 + r] * width + C + (L - 1) * d;
        for (int k = 0; k < d; k++) g[r][k] = gp[k];
    }
    for (long l = L - 1; l >= 0; l--) {
        int res = D->residual && l > 0;
        if (l) bwd_block(d, d, R, i0, l, res, has, slope, P, Gr, W, g, kept);
        else bwd_block(d, (int)C, R, i0, 0, res, has, slope, P, Gr, W, g, kept);
        long din = l ? d : C, col = l ? C + (l - 1) * d : 0;
        for (int r = 0; r < R; r++) {
            const float *gp = W->gpool + W->gb[i0 + r] * width + col;
            for (long k = 0; k < din; k++) g[r][k] += gp[k];
        }
    }
    for (int r = 0; r < R; r++) {
        long i = i0 + r;
        for (long c = 0; c < C; c++) {  /* through abs into the value table */
            float v = W->raw[i * C + c], sg = v > 0.f ? 1.f : (v < 0.f ? -1.f : 0.f);
            W->gtable[c * D->S + x[i * C + c]] += g[r][c] * sg;
        }
    }
    return kept + R;
}

INLINE void bwd_rows(const int d, const Dims *D, float slope, long n, const long *x,
                     const unsigned char *has, const Net *P, Net *Gr, Work *W) {
    int kept = 0;
    long i = n - 1;
    memset(W->pend, 0, D->L * d * sizeof(float));
    memset(W->gwt0, 0, D->C * 2 * d * sizeof(float));
    /* the rows past the last whole block first: the pass runs from the last row down */
    for (; i >= n - n % RB; i--) kept = bwd_group(d, 1, D, slope, i, x, has, P, Gr, W, kept);
    for (; i >= 0; i -= RB)
        kept = bwd_group(d, RB, D, slope, i - RB + 1, x, has, P, Gr, W, kept);
    if (kept) flush_all(d, D, kept, Gr, W);
    for (long c = 0; c < D->C; c++)
        for (long j = 0; j < d; j++) {
            Gr->wl[0][j * D->C + c] += W->gwt0[c * 2 * d + j];
            Gr->wr[0][j * D->C + c] += W->gwt0[c * 2 * d + d + j];
        }
}

static void features_backward(const Dims *D, const Net *P, Net *Gr, const Work *W) {
    long C = D->C, S = D->S, F = D->F;
    for (long c = 0; c < C; c++)
        for (long v = 0; v < S; v++) {
            float gt = W->gtable[c * S + v];
            const float *e = P->embed + (c * S + v) * F;
            float *ge = Gr->embed + (c * S + v) * F;
            for (long f = 0; f < F; f++) {
                ge[f] += gt * P->fw[c * F + f];
                Gr->fw[c * F + f] += gt * e[f];
            }
            Gr->fb[c] += gt;
        }
}

/* torch's AdamW: decoupled weight decay, bias corrections, eps outside the root. */
static void adamw(long np, float *p, const float *g, float *m, float *v, double step,
                  const Scal *S) {
    double bc1 = 1.0 - pow(S->b1, step), bc2 = 1.0 - pow(S->b2, step);
    float step_size = (float)(S->lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    float decay = (float)(1.0 - S->lr * S->wd), eps = (float)S->eps;
    float b1 = (float)S->b1, b2 = (float)S->b2;
    #pragma omp simd
    for (long i = 0; i < np; i++) {
        p[i] *= decay;
        m[i] += (1.f - b1) * (g[i] - m[i]);
        v[i] = b2 * v[i] + (1.f - b2) * g[i] * g[i];
        p[i] -= step_size * m[i] / (sqrtf(v[i]) / bc2_sqrt + eps);
    }
}

/* ---------------------------------------------------------------- one batch, an epoch */

static void batch_step(const Dims *D, const Scal *S, long n, long G, const long *x,
                       const unsigned char *has, const float *y, const float *unit,
                       const Net *P, Net *Gr, Work *W, float *out) {
    float slope = (float)S->slope;
    prepare(D, P, W);
    memset(W->pooled, 0, G * W->width * sizeof(float));
    memset(W->gtable, 0, D->C * D->S * sizeof(float));
    for (long g = 0; g < G; g++) W->inv[g] = 0.f;
    for (long i = 0; i < n; i++) W->inv[W->gb[i]] += 1.f;
    for (long g = 0; g < G; g++) W->inv[g] = 1.f / (W->inv[g] > 1.f ? W->inv[g] : 1.f);
    if (D->d == 32) fwd_rows(32, D, slope, n, x, has, P, W);
    else fwd_rows((int)D->d, D, slope, n, x, has, P, W);
    for (long g = 0; g < G; g++)
        for (long k = 0; k < W->width; k++) W->pooled[g * W->width + k] *= W->inv[g];
    head_forward(D, G, P, W);
    loss_grads(D, S, G, y, unit, W, out);
    head_backward(D, G, y, P, Gr, W);
    if (D->d == 32) bwd_rows(32, D, slope, n, x, has, P, Gr, W);
    else bwd_rows((int)D->d, D, slope, n, x, has, P, Gr, W);
    features_backward(D, P, Gr, W);
}

/* The rows of the graphs order[g0 .. g0 + G) of the packed set (graph k: rows
   node_ptr[k] .. node_ptr[k + 1] of x [rows, C] and has [rows]) into the workspace, each
   row's graph (0 .. G - 1) into gb; the row count, or -1 when the workspace is too small. */
static long gather_batch(const Dims *D, long G, const long *order, const long *node_ptr,
                         const long *x, const unsigned char *has, Work *W) {
    long n = 0, C = D->C;
    for (long g = 0; g < G; g++) {
        long first = node_ptr[order[g]], count = node_ptr[order[g] + 1] - first;
        if (n + count > D->maxn) return -1;
        memcpy(W->x + n * C, x + first * C, count * C * sizeof(long));
        memcpy(W->has + n, has + first, count);
        for (long i = 0; i < count; i++) W->gb[n + i] = g;
        n += count;
    }
    return n;
}

/* nb batches: batch b is the graphs order[graph_off[b] .. graph_off[b + 1]) of the packed
   set (see gather_batch), with y and unit [graphs in epoch order]. Each: forward, loss,
   backward into grad, then AdamW on param (np floats) with moments m, v and the step count
   *stepc. out: (total, mse, SRCC per hop) per batch. 0, or -1 on a batch too large. */
int cstep_epoch(const long *dims, const double *scal, const long *offs, long np, float *param,
                float *grad, float *m, float *v, float *stepc, long nb, const long *graph_off,
                const long *order, const long *node_ptr, const long *x,
                const unsigned char *has, const float *y, const float *unit, float *work,
                float *out) {
    const Dims *D = (const Dims *)dims;
    const Scal *S = (const Scal *)scal;
    Work W;
    Net P, Gr;
    work_layout(D, work, &W);
    net_at(&P, param, offs, D->L);
    net_at(&Gr, grad, offs, D->L);
    for (long b = 0; b < nb; b++) {
        long g0 = graph_off[b], G = graph_off[b + 1] - g0;
        if (G > D->maxg || G < 1) return -1;
        long n = gather_batch(D, G, order + g0, node_ptr, x, has, &W);
        if (n < 0) return -1;
        memset(grad, 0, np * sizeof(float));
        batch_step(D, S, n, G, W.x, W.has, y + g0, unit + g0, &P, &Gr, &W,
                   out + b * (3 + D->L));
        *stepc += 1.f;
        adamw(np, param, grad, m, v, (double)*stepc, S);
    }
    return 0;
}
"""
)
