// Mamba's hot loops as native kernels for float32 CPU tensors, forward and backward
// (models/native_mamba.py builds and calls them): the selective scan, and the causal depthwise
// convolution with its SiLU. Channels are the vector axis throughout, and the compiler vectorises
// every inner loop (expf included, through glibc's vector maths). One thread.
//
// The scan, per batch row and channel c, with state h (N values):
//     h_t = exp(dt_t A_c) h_{t-1} + dt_t u_t B_t,      y_t = sum_n C_t h_t.
// Layouts (contiguous): dt, u, y and their gradients (B, T, C); Bs, Cs (B, T, N); At = A^T (N, C).
// A block of W channels of one batch row is scanned at a time: the block's state (N x W) stays in
// the L1 cache and no step reduces across a vector.
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {
constexpr int64_t W = 16;  // channels per block: one 512-bit vector of floats
}

extern "C" {

// scratch: N * W floats.
void scan_forward(const float *dt, const float *At, const float *u, const float *Bs, const float *Cs,
                  float *y, float *scratch, int64_t B, int64_t T, int64_t C, int64_t N) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t c0 = 0; c0 < C; c0 += W) {
            const int64_t w = C - c0 < W ? C - c0 : W;
            float *h = scratch;  // (N, W)
            std::memset(h, 0, N * W * sizeof(float));
            for (int64_t t = 0; t < T; t++) {
                const int64_t i = (b * T + t) * C + c0;
                const float *bs = Bs + (b * T + t) * N, *cs = Cs + (b * T + t) * N;
                float acc[W] = {0};
                for (int64_t n = 0; n < N; n++) {
                    const float *a = At + n * C + c0;
                    float *hn = h + n * W;
#pragma omp simd
                    for (int64_t j = 0; j < w; j++) {
                        hn[j] = std::exp(dt[i + j] * a[j]) * hn[j] + dt[i + j] * u[i + j] * bs[n];
                        acc[j] += hn[j] * cs[n];
                    }
                }
                for (int64_t j = 0; j < w; j++) y[i + j] = acc[j];
            }
        }
}

// Gradients of sum(gy * y): gdt, gu written; gAt, gBs, gCs accumulated (zero them first).
// scratch: (4 T + 2) * N * W floats.
void scan_backward(const float *dt, const float *At, const float *u, const float *Bs, const float *Cs,
                   const float *gy, float *gdt, float *gAt, float *gu, float *gBs, float *gCs,
                   float *scratch, int64_t B, int64_t T, int64_t C, int64_t N) {
    const int64_t S = N * W;  // one step's block of state
    float *hs = scratch;                // (T + 1, N, W): the block's states h_0 ... h_T
    float *decay = hs + (T + 1) * S;    // (T, N, W): exp(dt_t A)
    float *sumB = decay + T * S;        // (T, N, W): per-lane partial sums of gBs, over blocks
    float *sumC = sumB + T * S;         // (T, N, W): the same for gCs
    float *gh = sumC + T * S;           // (N, W): d loss / d h_t from later steps
    for (int64_t b = 0; b < B; b++) {
        std::memset(sumB, 0, 2 * T * S * sizeof(float));
        for (int64_t c0 = 0; c0 < C; c0 += W) {
            const int64_t w = C - c0 < W ? C - c0 : W;
            std::memset(hs, 0, S * sizeof(float));
            for (int64_t t = 0; t < T; t++) {  // the forward pass again, keeping states and decays
                const int64_t i = (b * T + t) * C + c0;
                const float *bs = Bs + (b * T + t) * N;
                for (int64_t n = 0; n < N; n++) {
                    const float *a = At + n * C + c0;
                    const float *h0 = hs + t * S + n * W;
                    float *h1 = hs + (t + 1) * S + n * W, *e = decay + t * S + n * W;
#pragma omp simd
                    for (int64_t j = 0; j < w; j++) {
                        e[j] = std::exp(dt[i + j] * a[j]);
                        h1[j] = e[j] * h0[j] + dt[i + j] * u[i + j] * bs[n];
                    }
                }
            }
            std::memset(gh, 0, S * sizeof(float));
            for (int64_t t = T - 1; t >= 0; t--) {
                const int64_t i = (b * T + t) * C + c0;
                const float *bs = Bs + (b * T + t) * N, *cs = Cs + (b * T + t) * N;
                float g_dtA[W] = {0}, g_x[W] = {0};  // sums over n: d loss / d (dt_t) via A, via x
                for (int64_t n = 0; n < N; n++) {
                    const float *a = At + n * C + c0, *e = decay + t * S + n * W;
                    const float *h0 = hs + t * S + n * W, *h1 = hs + (t + 1) * S + n * W;
                    float *ga = gAt + n * C + c0, *ghn = gh + n * W;
                    float *sb = sumB + t * S + n * W, *sc = sumC + t * S + n * W;
#pragma omp simd
                    for (int64_t j = 0; j < w; j++) {
                        const float g = gy[i + j], d = dt[i + j];
                        const float G = ghn[j] + g * cs[n];  // d loss / d h_t
                        const float gp = G * h0[j] * e[j];   // d loss / d (dt_t A_n)
                        sc[j] += g * h1[j];
                        sb[j] += G * d * u[i + j];
                        ga[j] += gp * d;
                        g_dtA[j] += gp * a[j];
                        g_x[j] += G * bs[n];
                        ghn[j] = G * e[j];
                    }
                }
                for (int64_t j = 0; j < w; j++) {
                    gdt[i + j] = g_dtA[j] + g_x[j] * u[i + j];
                    gu[i + j] = g_x[j] * dt[i + j];
                }
            }
        }
        for (int64_t k = 0; k < T * N; k++) {  // this batch row's sums over channels
            float b_sum = 0.f, c_sum = 0.f;
            for (int64_t j = 0; j < W; j++) b_sum += sumB[k * W + j], c_sum += sumC[k * W + j];
            gBs[b * T * N + k] += b_sum;
            gCs[b * T * N + k] += c_sum;
        }
    }
}

// The convolution's pre-activation at (b, t) into out (C floats): bias plus the taps that reach it.
static void conv_row(const float *x, const float *wT, const float *bias, float *out, int64_t x_row,
                     int64_t b, int64_t t, int64_t T, int64_t C, int64_t K) {
#pragma omp simd
    for (int64_t c = 0; c < C; c++) out[c] = bias[c];
    for (int64_t k = 0; k < K; k++) {
        const int64_t s = t - K + 1 + k;
        if (s < 0) continue;
        const float *in = x + (b * T + s) * x_row, *w = wT + k * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) out[c] += w[c] * in[c];
    }
}

// Mamba's causal depthwise convolution and SiLU: y[b, t, c] = silu(bias[c] + sum_k wT[k, c] x[b, t - K + 1 + k, c]),
// with x[b, s, c] = 0 for s < 0. x (B, T, C) with `x_row` floats between consecutive (b, t) rows (a
// view into a wider tensor needs no copy); wT (K, C); y (B, T, C) contiguous.
void conv_silu_forward(const float *x, const float *wT, const float *bias, float *y, int64_t x_row,
                       int64_t B, int64_t T, int64_t C, int64_t K) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            float *out = y + (b * T + t) * C;
            conv_row(x, wT, bias, out, x_row, b, t, T, C, K);
#pragma omp simd
            for (int64_t c = 0; c < C; c++) out[c] = out[c] / (1.f + std::exp(-out[c]));
        }
}

// Gradients of sum(gy * y): gx (B, T, C) contiguous, written; gwT (K, C) and gbias (C) accumulated
// (zero them first). gpre: scratch of B * T * C floats (d loss / d the pre-activation).
void conv_silu_backward(const float *x, const float *wT, const float *bias, const float *gy, float *gx,
                        float *gwT, float *gbias, float *gpre, int64_t x_row, int64_t B, int64_t T,
                        int64_t C, int64_t K) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            float *gp = gpre + (b * T + t) * C;
            conv_row(x, wT, bias, gp, x_row, b, t, T, C, K);  // the pre-activation again
            const float *g = gy + (b * T + t) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                const float sig = 1.f / (1.f + std::exp(-gp[c]));
                gp[c] = g[c] * sig * (1.f + gp[c] * (1.f - sig));
                gbias[c] += gp[c];
            }
            for (int64_t k = 0; k < K; k++) {
                const int64_t s = t - K + 1 + k;
                if (s < 0) continue;
                const float *in = x + (b * T + s) * x_row;
                float *gw = gwT + k * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) gw[c] += gp[c] * in[c];
            }
        }
    for (int64_t b = 0; b < B; b++)
        for (int64_t s = 0; s < T; s++) {  // x[s] reached y[s + K - 1 - k] through tap k
            float *out = gx + (b * T + s) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) out[c] = 0.f;
            for (int64_t k = 0; k < K; k++) {
                const int64_t t = s + K - 1 - k;
                if (t >= T) continue;
                const float *gp = gpre + (b * T + t) * C, *w = wT + k * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) out[c] += w[c] * gp[c];
            }
        }
}
}
