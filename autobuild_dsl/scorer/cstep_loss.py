"""The ranked loss of cstep_source.py's C epoch: MSE + lambda * mean_h (1 - soft SRCC_h),
the soft SRCC with torchsort's L2 soft rank (sort, pool-adjacent-violators, s - fit; the
maths of softrank._UnitSpearman) in double, and its gradient into the pooled table.
Included by cstep_source.SOURCE after its types (Dims, Scal, Work)."""

LOSS_SOURCE = r"""
/* ---------------------------------------------------------------- loss */

typedef struct { float v; long i; } Ranked;

static int by_value_desc(const void *a, const void *b) {
    const Ranked *x = a, *y = b;
    if (x->v != y->v) return x->v > y->v ? -1 : 1;
    return x->i < y->i ? -1 : (x->i > y->i);
}

/* Soft SRCC of `vals` [n] against the centred unit-norm ranks `unit` (torchsort's L2 soft
   rank: sort, non-increasing isotonic fit of s - (n..1) by pool-adjacent-violators, s - fit),
   and d(gout * srcc) / d vals into gvals. */
static double soft_srcc(long n, const float *vals, const float *unit, double strength,
                        double gout, float *gvals, double *scratch) {
    double *s = scratch, *c = s + n, *us = c + n, *gc = us + n, *bs = gc + n, *bc = bs + n;
    long *start = (long *)(bc + n);
    Ranked *order = (Ranked *)(start + n);
    for (long j = 0; j < n; j++) { order[j].v = vals[j] * (float)(1.0 / strength); order[j].i = j; }
    qsort(order, n, sizeof(Ranked), by_value_desc);
    long nb = 0;
    for (long j = 0; j < n; j++) {
        s[j] = order[j].v;
        us[j] = unit[order[j].i];
        double sum = s[j] - (double)(n - j), cnt = 1.0;
        long first = j;
        while (nb > 0 && bs[nb - 1] * cnt <= sum * bc[nb - 1]) {
            nb--; sum += bs[nb]; cnt += bc[nb]; first = start[nb];
        }
        bs[nb] = sum; bc[nb] = cnt; start[nb] = first; nb++;
    }
    double mean = 0.0, norm = 0.0, dot = 0.0;
    for (long b = 0; b < nb; b++) {
        long end = b + 1 < nb ? start[b + 1] : n;
        for (long j = start[b]; j < end; j++) c[j] = s[j] - bs[b] / bc[b];
    }
    for (long j = 0; j < n; j++) mean += c[j];
    mean /= n;
    for (long j = 0; j < n; j++) { c[j] -= mean; norm += c[j] * c[j]; dot += c[j] * us[j]; }
    norm = sqrt(norm);
    if (norm < 1e-12) norm = 1e-12;
    double srcc = dot / norm, gmean = 0.0;
    for (long j = 0; j < n; j++) { gc[j] = (us[j] - c[j] * srcc / norm) * gout / norm; gmean += gc[j]; }
    gmean /= n;
    for (long b = 0; b < nb; b++) {
        long end = b + 1 < nb ? start[b + 1] : n;
        double avg = 0.0;
        for (long j = start[b]; j < end; j++) avg += gc[j] - gmean;
        avg /= (double)(end - start[b]);
        for (long j = start[b]; j < end; j++)
            gvals[order[j].i] = (float)((gc[j] - gmean - avg) / strength);
    }
    return srcc;
}

/* Loss = MSE + lambda * mean_h (1 - SRCC_h) into out (total, mse, SRCC per hop; NaN when
   a batch has < 2 graphs), and the gradient of the pooled table from the norms. */
static void loss_grads(const Dims *D, const Scal *S, long G, const float *y,
                       const float *unit, Work *W, float *out) {
    long H = D->L + 1, width = W->width, d = D->d;
    double mse = 0.0;
    for (long g = 0; g < G; g++) mse += (double)(W->pred[g] - y[g]) * (W->pred[g] - y[g]);
    mse /= G;
    double total = mse;
    int ranked = S->lambda > 0 && G >= 2;
    for (long h = 0; h < H; h++) {
        float *gn = W->gnorms + h * G;
        if (ranked) {
            double srcc = soft_srcc(G, W->norms + h * G, unit, S->strength, -S->lambda / H, gn,
                                    W->rank);
            total += S->lambda * (1.0 - srcc) / H;
            out[2 + h] = (float)srcc;
        } else {
            memset(gn, 0, G * sizeof(float));
            out[2 + h] = NAN;
        }
    }
    out[0] = (float)total;
    out[1] = (float)mse;
    for (long g = 0; g < G; g++)
        for (long h = 0; h < H; h++) {
            long lo = h ? D->C + (h - 1) * d : 0, hi = h ? lo + d : D->C;
            float gn = W->gnorms[h * G + g];
            for (long k = lo; k < hi; k++) {
                float p = W->pooled[g * width + k];
                W->gpool[g * width + k] = p > 0.f ? gn : (p < 0.f ? -gn : 0.f);
            }
        }
}

"""
