/* Compiled CPU kernels of the packed 2D splat rasteriser (forward and backward).
 *
 * The same sum as gaussian_mri/render/splat2d.py (the PyTorch reference): splat n adds
 * amp[n, ch] * exp(-q / 2), q = d^T P d, d = p - mean[n], P = [[a, b], [b, c]], to every pixel p of
 * image batch[n] with q <= qmax[n]. Pixel centres sit at integer (x, y); the output is
 * (n_batch, n_chan, height, width), C order.
 *
 * Each splat visits only the pixels of its ellipse: per row the x-range where q <= qmax is solved
 * from the quadratic in x (widened by one pixel and then tested pixel by pixel, so rounding cannot
 * drop a pixel the reference keeps). Splats whose conic is not positive definite, whose centre is
 * not finite or whose qmax <= 0 render nothing (a conic with det <= 0 has no bounded ellipse).
 * The forward accumulates into one canvas per thread (static schedule, summed in thread order:
 * reproducible for a given thread count; at most 256 MB of extra canvases), the backward gives
 * every splat its own gradients (no atomics, parallel over splats).
 * Plain C99 + optional OpenMP, called through ctypes (gaussian_mri/render/native/__init__.py).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define DEFINE_KERNELS(T, SUF, EXP, SQRT, CEIL, FLOOR)                                                    \
    /* Row range [y0, y1] and, for row y, the column range of the ellipse; returns 0 if culled. */     \
    static int rows_##SUF(const T *m, const T *p, T qm, int64_t H, int64_t W, int64_t *y0, int64_t *y1) \
    {                                                                                                  \
        T a = p[0], b = p[1], c = p[2];                                                                \
        T det = a * c - b * b;                                                                         \
        if (!(qm > 0) || !(det > 0) || !(a > 0) || !isfinite(m[0]) || !isfinite(m[1])) return 0;      \
        T ry = SQRT(qm * a / det); /* k * sqrt(Syy), Syy = a / det */                                  \
        T lo = CEIL(m[1] - ry) - 1, hi = FLOOR(m[1] + ry) + 1;                                          \
        /* cull in floating point before any cast (a huge or NaN bound would overflow int64) */        \
        if (!(hi >= 0) || !(lo <= (T)(H - 1))) return 0;                                               \
        *y0 = lo < 0 ? 0 : (int64_t)lo;                                                                \
        *y1 = hi > (T)(H - 1) ? H - 1 : (int64_t)hi;                                                   \
        (void)W;                                                                                       \
        return *y0 <= *y1;                                                                             \
    }                                                                                                  \
    static int cols_##SUF(const T *m, const T *p, T qm, T dy, int64_t W, int64_t *x0, int64_t *x1)    \
    {                                                                                                  \
        T a = p[0], b = p[1], c = p[2];                                                                \
        T disc = b * b * dy * dy - a * (c * dy * dy - qm);                                             \
        if (disc < 0) {                                                                                \
            if (disc < -1e-3 * qm * a) return 0;                                                       \
            disc = 0;                                                                                  \
        }                                                                                              \
        T s = SQRT(disc), cx = m[0] - b * dy / a;                                                      \
        T lo = CEIL(cx - s / a) - 1, hi = FLOOR(cx + s / a) + 1;                                        \
        if (!(hi >= 0) || !(lo <= (T)(W - 1))) return 0; /* also NaN and huge bounds */                \
        *x0 = lo < 0 ? 0 : (int64_t)lo;                                                                \
        *x1 = hi > (T)(W - 1) ? W - 1 : (int64_t)hi;                                                   \
        return *x0 <= *x1;                                                                             \
    }                                                                                                  \
    void gm_splat_forward_##SUF(int64_t n, const T *means, const T *conics, const T *amps,              \
                                const int64_t *batch, const T *qmax, int64_t n_chan, int64_t n_batch,  \
                                int64_t H, int64_t W, T *out, int n_threads)                           \
    {                                                                                                  \
        int64_t plane = H * W, size = n_batch * n_chan * plane;                                        \
        int nt = n_threads < 1 ? 1 : n_threads;                                                        \
        /* one canvas per extra thread: at most 256 MB of them, and threads only for enough splats */  \
        int64_t cap = 1 + ((int64_t)1 << 28) / (size * (int64_t)sizeof(T) + 1);                        \
        if (nt > cap) nt = (int)cap;                                                                   \
        if (n < 256) nt = 1;                                                                           \
        T *scratch = NULL;                                                                             \
        if (nt > 1) {                                                                                  \
            scratch = (T *)calloc((size_t)(nt - 1) * (size_t)size, sizeof(T));                         \
            if (!scratch) nt = 1;                                                                      \
        }                                                                                              \
        memset(out, 0, (size_t)size * sizeof(T));                                                      \
        _Pragma("omp parallel num_threads(nt)")                                                        \
        {                                                                                              \
            int tid = 0;                                                                               \
            OMP_TID(tid);                                                                              \
            T *canvas = tid == 0 ? out : scratch + (size_t)(tid - 1) * (size_t)size;                   \
            /* static: the same splats go to the same thread every call, and the canvases are summed */ \
            /* in thread order, so a result is bitwise reproducible for a given thread count */          \
            _Pragma("omp for schedule(static)")                                                         \
            for (int64_t i = 0; i < n; ++i) {                                                          \
                const T *m = means + 2 * i, *p = conics + 3 * i, *amp = amps + n_chan * i;             \
                T qm = qmax[i];                                                                        \
                int64_t y0, y1, x0, x1, bi = batch[i];                                                 \
                if (bi < 0 || bi >= n_batch) continue;                                                 \
                if (!rows_##SUF(m, p, qm, H, W, &y0, &y1)) continue;                                   \
                T *img = canvas + bi * n_chan * plane;                                                 \
                for (int64_t y = y0; y <= y1; ++y) {                                                   \
                    T dy = (T)y - m[1];                                                                \
                    if (!cols_##SUF(m, p, qm, dy, W, &x0, &x1)) continue;                              \
                    T cdy = p[2] * dy * dy, bdy = 2 * p[1] * dy;                                       \
                    for (int64_t x = x0; x <= x1; ++x) {                                               \
                        T dx = (T)x - m[0];                                                            \
                        T q = (p[0] * dx * dx + cdy) + bdy * dx;                                       \
                        if (q > qm) continue;                                                          \
                        T w = EXP((T)(-0.5) * q);                                                      \
                        for (int64_t ch = 0; ch < n_chan; ++ch) img[ch * plane + y * W + x] += w * amp[ch]; \
                    }                                                                                  \
                }                                                                                      \
            }                                                                                          \
        }                                                                                              \
        if (scratch) {                                                                                 \
            _Pragma("omp parallel for num_threads(nt) schedule(static)")                                \
            for (int64_t j = 0; j < size; ++j) {                                                       \
                T s = out[j];                                                                          \
                for (int t = 0; t < nt - 1; ++t) s += scratch[(size_t)t * (size_t)size + (size_t)j];   \
                out[j] = s;                                                                            \
            }                                                                                          \
            free(scratch);                                                                             \
        }                                                                                              \
    }                                                                                                  \
    void gm_splat_backward_##SUF(int64_t n, const T *means, const T *conics, const T *amps,             \
                                 const int64_t *batch, const T *qmax, int64_t n_chan, int64_t n_batch, \
                                 int64_t H, int64_t W, const T *grad, T *g_means, T *g_conics,          \
                                 T *g_amps, int n_threads)                                             \
    {                                                                                                  \
        int64_t plane = H * W;                                                                         \
        int nt = n_threads < 1 ? 1 : n_threads;                                                        \
        _Pragma("omp parallel for num_threads(nt) schedule(dynamic, 64)")                               \
        for (int64_t i = 0; i < n; ++i) {                                                              \
            const T *m = means + 2 * i, *p = conics + 3 * i, *amp = amps + n_chan * i;                 \
            T qm = qmax[i];                                                                            \
            T ga[64];                                                                                  \
            T sxx = 0, sxy = 0, syy = 0, sx = 0, sy = 0;                                               \
            int64_t y0, y1, x0, x1, bi = batch[i], nc = n_chan < 64 ? n_chan : 64;                     \
            for (int64_t ch = 0; ch < nc; ++ch) ga[ch] = 0;                                            \
            if (bi >= 0 && bi < n_batch && rows_##SUF(m, p, qm, H, W, &y0, &y1)) {                     \
                const T *g = grad + bi * n_chan * plane;                                               \
                for (int64_t y = y0; y <= y1; ++y) {                                                   \
                    T dy = (T)y - m[1];                                                                \
                    if (!cols_##SUF(m, p, qm, dy, W, &x0, &x1)) continue;                              \
                    T cdy = p[2] * dy * dy, bdy = 2 * p[1] * dy;                                       \
                    for (int64_t x = x0; x <= x1; ++x) {                                               \
                        T dx = (T)x - m[0];                                                            \
                        T q = (p[0] * dx * dx + cdy) + bdy * dx;                                       \
                        if (q > qm) continue;                                                          \
                        T w = EXP((T)(-0.5) * q), h = 0;                                               \
                        for (int64_t ch = 0; ch < nc; ++ch) {                                          \
                            T gv = g[ch * plane + y * W + x];                                          \
                            ga[ch] += w * gv;                                                          \
                            h += gv * amp[ch];                                                         \
                        }                                                                              \
                        T s = (T)(-0.5) * h * w; /* dL/dq */                                           \
                        sxx += s * dx * dx;                                                            \
                        sxy += s * dx * dy;                                                            \
                        syy += s * dy * dy;                                                            \
                        sx += s * dx;                                                                  \
                        sy += s * dy;                                                                  \
                    }                                                                                  \
                }                                                                                      \
            }                                                                                          \
            if (g_amps)                                                                                \
                for (int64_t ch = 0; ch < nc; ++ch) g_amps[n_chan * i + ch] = ga[ch];                  \
            if (g_conics) {                                                                            \
                g_conics[3 * i] = sxx;                                                                 \
                g_conics[3 * i + 1] = 2 * sxy;                                                         \
                g_conics[3 * i + 2] = syy;                                                             \
            }                                                                                          \
            if (g_means) {                                                                             \
                g_means[2 * i] = -2 * (p[0] * sx + p[1] * sy);                                         \
                g_means[2 * i + 1] = -2 * (p[1] * sx + p[2] * sy);                                     \
            }                                                                                          \
        }                                                                                              \
    }

#ifdef _OPENMP
#define OMP_TID(t) ((t) = omp_get_thread_num())
#else
#define OMP_TID(t) ((void)(t))
#endif

DEFINE_KERNELS(float, f32, expf, sqrtf, ceilf, floorf)
DEFINE_KERNELS(double, f64, exp, sqrt, ceil, floor)

/* Version of the calling convention; the loader checks it. */
int gm_native_abi(void) { return 1; }
int gm_native_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
