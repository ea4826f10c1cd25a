// AVX2 kernels of radixrt._quant_cpu (included by quant_cpu.cpp on x86 only; compiled with
// target attributes, run only where __builtin_cpu_supports says AVX2 + FMA + F16C).
//
// Small-M matmuls from packed weights, y[r, n] = sum_k x[r, k] W[n, k], a weight row at a
// time and up to four activation rows at once (the weights are read once per four rows):
//   f32 path: fp32 activations. Per group, q (0..15 or int8) to floats once, times d
//             (plus m for q4): the dequantized weights themselves; per activation row 4
//             FMAs. Same weights, same math as dequantize + matmul; only the summation
//             order differs.
//   i8 path:  activations quantized to int8 per group (llama.cpp's Q8_1 trick), maddubs
//             integer dot products. Fewer instructions, but the activation rounding moves
//             logits (measured: it flips the default model's greedy answers; see
//             docs/benchmarks.md), so it is opt-in.

#pragma once

#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

namespace avx2 {

// Activations of one call, prepared once: fp32 rows and, for the i8 path, group sums (its q4
// minimum term) and int8 rows with their per-group scales.
struct Act {
    const float* x;
    const float* xs;
    const int8_t* xq;
    const float* xd;
    int64_t K;
};

// Weights: qs rows of K/2 (q4) or K (q8) bytes, fp16 d (and m) per group.
struct Weights {
    const uint8_t* qs;
    const uint16_t* d;
    const uint16_t* m;
};

AVX2_TARGET inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// fp16 scales of one weight row -> fp32, 8 at a time.
AVX2_TARGET inline void row_scales(const uint16_t* h, int64_t nb, float* out) {
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + b));
        _mm256_storeu_ps(out + b, _mm256_cvtph_ps(v));
    }
    for (; b < nb; ++b) out[b] = _cvtsh_ss(h[b]);
}

AVX2_TARGET inline float dot8(const float* a, const float* b, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    }
    float s = hsum8(acc);
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

// Group sums xs[g] of the fp32 rows and, if xq, the int8 quantization: xd = max|x| / 127,
// xq = round-to-nearest-even(x / xd) (cvtps2dq under the default MXCSR mode).
AVX2_TARGET void prepare(const float* x, int64_t groups, float* xs, int8_t* xq, float* xd) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t i = 0; i < groups; ++i) {
        const float* v = x + i * kGroup;
        __m256 a0 = _mm256_loadu_ps(v), a1 = _mm256_loadu_ps(v + 8);
        __m256 a2 = _mm256_loadu_ps(v + 16), a3 = _mm256_loadu_ps(v + 24);
        xs[i] = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        if (xq == nullptr) continue;
        __m256 mx = _mm256_max_ps(
            _mm256_max_ps(_mm256_and_ps(a0, abs_mask), _mm256_and_ps(a1, abs_mask)),
            _mm256_max_ps(_mm256_and_ps(a2, abs_mask), _mm256_and_ps(a3, abs_mask)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float dq = _mm_cvtss_f32(m4) / 127.f;
        const __m256 inv = _mm256_set1_ps(dq > 0.f ? 1.f / dq : 0.f);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(a0, inv));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(a1, inv));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(a2, inv));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(a3, inv));
        // packs work per 128-bit lane: one permute restores the order.
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + i * kGroup), p);
        xd[i] = dq;
    }
}

// Weight row n's scales (dw, and mw for q4) as fp32, and the q4 minimum term of each
// activation row: mins[r] = m_w . (group sums of x row r0 + r).
template <int RT, bool Q4>
AVX2_TARGET inline void row_prologue(const Act& a, int64_t r0, const Weights& w, int64_t n,
                                     float* dw, float* mw, float* mins) {
    const int64_t nb = a.K / kGroup;
    row_scales(w.d + n * nb, nb, dw);
    for (int r = 0; r < RT; ++r) mins[r] = 0.f;
    if (Q4) {
        row_scales(w.m + n * nb, nb, mw);
        for (int r = 0; r < RT; ++r) mins[r] = dot8(mw, a.xs + (r0 + r) * nb, nb);
    }
}

// ----------------------------------------------------------------------------- f32 path

// Group g of a weight matrix as 4 x 8 floats q * d (q4: nibbles 0..15; q8: int8).
template <bool Q4>
AVX2_TARGET inline void group_floats(const uint8_t* qs, int64_t g, float db, __m256* w) {
    __m256i v[4];
    if (Q4) {
        // Bytes 0-7 and 8-15 widened to 32-bit lanes straight from memory (one load-op
        // each): a lane's low nibble is weight i (a mask), its high nibble weight i + 16 (a
        // shift; the lane holds only that byte). 10 ops a group where byte-wise unpacking
        // took 13; measured 1.2-1.6x the kernel's rate at 1-4 rows.
        const __m128i* p = reinterpret_cast<const __m128i*>(qs + g * 16);
        const __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p));
        const __m256i b1 = _mm256_cvtepu8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs + g * 16 + 8)));
        const __m256i lo = _mm256_set1_epi32(15);
        v[0] = _mm256_and_si256(b0, lo);
        v[1] = _mm256_and_si256(b1, lo);
        v[2] = _mm256_srli_epi32(b0, 4);
        v[3] = _mm256_srli_epi32(b1, 4);
    } else {
        const uint8_t* p = qs + g * kGroup;
        for (int i = 0; i < 4; ++i) {
            v[i] = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * i)));
        }
    }
    const __m256 d = _mm256_set1_ps(db);
    for (int i = 0; i < 4; ++i) w[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(v[i]), d);
}

// Group g's dequantized weights: d * q, plus m for q4 (as dequantize_ref computes them).
template <bool Q4>
AVX2_TARGET inline void group_weights(const uint8_t* qs, int64_t g, float d, float m,
                                      __m256* w) {
    group_floats<Q4>(qs, g, d, w);
    if (Q4) {
        const __m256 mb = _mm256_set1_ps(m);
        for (int i = 0; i < 4; ++i) w[i] = _mm256_add_ps(w[i], mb);
    }
}

struct F32Kernel {
    // Accumulators: NA per activation row (each FMA chain gets a new term every NA/4 of a
    // group), two sets for a single row so that its four FMAs per group never wait on
    // the FMA latency. q4 weights are dequantized whole (d * q, then + m: the same fp32
    // weights as dequantize_ref) rather than adding m * sum(x) per row afterwards: the
    // per-row dot products of m with the group sums cost more than the four adds a group,
    // which run beside the FMAs (10-20 % of the kernel's time at 3-4 rows,
    // bench/ab_quant_kernels.py).
    template <int RT, bool Q4>
    AVX2_TARGET static void tile(const Act& a, int64_t r0, const Weights& w, int64_t n0,
                                 int64_t n1, float* y, int64_t ldy, float* scratch) {
        constexpr int NA = RT >= 3 ? 2 : 4;
        constexpr int SETS = RT == 1 ? 2 : 1;
        const int64_t K = a.K, nb = K / kGroup;
        float *dw = scratch, *mw = scratch + nb;
        for (int64_t n = n0; n < n1; ++n) {
            row_scales(w.d + n * nb, nb, dw);
            if (Q4) row_scales(w.m + n * nb, nb, mw);
            __m256 acc[SETS][RT][NA];
            for (int s = 0; s < SETS; ++s)
                for (int r = 0; r < RT; ++r)
                    for (int i = 0; i < NA; ++i) acc[s][r][i] = _mm256_setzero_ps();
            // Group b into one accumulator set. The sets alternate by group in an unrolled
            // pair, so that each set is a compile-time index: indexed by b's parity at run
            // time, GCC kept them in memory (a load and a store per FMA).
            const auto group = [&](int64_t b, __m256 (&set)[RT][NA]) AVX2_TARGET {
                __m256 wf[4];
                group_weights<Q4>(w.qs, n * nb + b, dw[b], Q4 ? mw[b] : 0.f, wf);
#pragma GCC unroll 4
                for (int r = 0; r < RT; ++r) {
                    const float* xr = a.x + (r0 + r) * K + b * kGroup;
#pragma GCC unroll 4
                    for (int i = 0; i < 4; ++i) {
                        set[r][i % NA] =
                            _mm256_fmadd_ps(wf[i], _mm256_loadu_ps(xr + 8 * i), set[r][i % NA]);
                    }
                }
            };
            int64_t b = 0;
            if (SETS == 2) {
                for (; b + 2 <= nb; b += 2) {
                    group(b, acc[0]);
                    group(b + 1, acc[SETS - 1]);
                }
            }
            for (; b < nb; ++b) group(b, acc[0]);
            for (int r = 0; r < RT; ++r) {
                __m256 t = acc[0][r][0];
                for (int i = 1; i < NA; ++i) t = _mm256_add_ps(t, acc[0][r][i]);
                for (int s = 1; s < SETS; ++s)
                    for (int i = 0; i < NA; ++i) t = _mm256_add_ps(t, acc[s][r][i]);
                y[r * ldy + n] = hsum8(t);
            }
        }
    }
};

// The f32 path's math with one summation order for every activation row, whatever the tile:
// two accumulators (a group's vectors 0, 2 and 1, 3), added at the end. F32Kernel's tiles
// sum in orders of their own (more chains for fewer rows), so there a row's result depends
// on how many rows share the call; here it does not, and a request's logits are the same
// alone or in any batch (path kInvariant, the engine's --deterministic). Two-row tiles
// take two weight rows at a time for more independent FMA chains; one-row tiles cannot
// without spilling (measured slower), so they wait on the FMA latency: that is the price.
struct F32InvariantKernel {
    template <int RT, int NW, bool Q4>
    AVX2_TARGET static void rows(const Act& a, int64_t r0, const Weights& w, int64_t n,
                                 float* y, int64_t ldy, const float* dw, const float* mw) {
        const int64_t K = a.K, nb = K / kGroup;
        __m256 acc[NW][RT][2];
        for (int j = 0; j < NW; ++j)
            for (int r = 0; r < RT; ++r) acc[j][r][0] = acc[j][r][1] = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; ++b) {
#pragma GCC unroll 2
            for (int j = 0; j < NW; ++j) {
                __m256 wf[4];
                group_weights<Q4>(w.qs, (n + j) * nb + b, dw[j * nb + b],
                                  Q4 ? mw[j * nb + b] : 0.f, wf);
#pragma GCC unroll 4
                for (int r = 0; r < RT; ++r) {
                    const float* xr = a.x + (r0 + r) * K + b * kGroup;
#pragma GCC unroll 4
                    for (int i = 0; i < 4; ++i) {
                        acc[j][r][i % 2] = _mm256_fmadd_ps(wf[i], _mm256_loadu_ps(xr + 8 * i),
                                                           acc[j][r][i % 2]);
                    }
                }
            }
        }
        for (int j = 0; j < NW; ++j)
            for (int r = 0; r < RT; ++r)
                y[r * ldy + n + j] = hsum8(_mm256_add_ps(acc[j][r][0], acc[j][r][1]));
    }

    template <int RT, bool Q4>
    AVX2_TARGET static void tile(const Act& a, int64_t r0, const Weights& w, int64_t n0,
                                 int64_t n1, float* y, int64_t ldy, float* scratch) {
        constexpr int NW = RT == 2 ? 2 : 1;
        const int64_t nb = a.K / kGroup;
        float *dw = scratch, *mw = scratch + NW * nb;
        const auto scales = [&](int64_t n, int count) {
            for (int j = 0; j < count; ++j) {
                row_scales(w.d + (n + j) * nb, nb, dw + j * nb);
                if (Q4) row_scales(w.m + (n + j) * nb, nb, mw + j * nb);
            }
        };
        int64_t n = n0;
        for (; n + NW <= n1; n += NW) {
            scales(n, NW);
            rows<RT, NW, Q4>(a, r0, w, n, y, ldy, dw, mw);
        }
        for (; n < n1; ++n) {
            scales(n, 1);
            rows<RT, 1, Q4>(a, r0, w, n, y, ldy, dw, mw);
        }
    }
};

// ------------------------------------------------------------------------------ i8 path

struct I8Kernel {
    // Per group and activation row: maddubs (u8 x s8 -> 16 x i16), madd with ones (-> 8 x
    // i32), convert, one FMA with d_w * d_x. q4 weights are unsigned already; q8 ones go in
    // as |w| with x given w's sign, as llama.cpp does (|w| <= 128, |x| <= 127: a pair sums to
    // at most 32512, so maddubs never saturates). Even and odd groups use separate
    // accumulators to break the FMA chain.
    template <int RT, bool Q4>
    AVX2_TARGET static void tile(const Act& a, int64_t r0, const Weights& w, int64_t n0,
                                 int64_t n1, float* y, int64_t ldy, float* scratch) {
        const int64_t K = a.K, nb = K / kGroup;
        float *dw = scratch, *mw = scratch + nb, *sc = scratch + 2 * nb;
        const __m256i ones = _mm256_set1_epi16(1);
        for (int64_t n = n0; n < n1; ++n) {
            float mins[RT];
            row_prologue<RT, Q4>(a, r0, w, n, dw, mw, mins);
            for (int r = 0; r < RT; ++r) {  // sc = d_w * d_x per group
                const float* xd = a.xd + (r0 + r) * nb;
                for (int64_t b = 0; b < nb; ++b) sc[r * nb + b] = dw[b] * xd[b];
            }
            __m256 acc[2][RT];
            for (int r = 0; r < RT; ++r) acc[0][r] = acc[1][r] = _mm256_setzero_ps();
            for (int64_t b = 0; b < nb; ++b) {
                const int64_t g = n * nb + b;
                __m256i q;
                if (Q4) {
                    __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.qs + g * 16));
                    q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw),
                                         _mm256_set1_epi8(0x0f));
                } else {
                    q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qs + g * kGroup));
                }
                const __m256i qu = Q4 ? q : _mm256_sign_epi8(q, q);
#pragma GCC unroll 4
                for (int r = 0; r < RT; ++r) {
                    __m256i xv = _mm256_loadu_si256(
                        reinterpret_cast<const __m256i*>(a.xq + ((r0 + r) * nb + b) * kGroup));
                    if (!Q4) xv = _mm256_sign_epi8(xv, q);
                    __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(qu, xv), ones);
                    acc[b & 1][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p),
                                                    _mm256_broadcast_ss(sc + r * nb + b),
                                                    acc[b & 1][r]);
                }
            }
            for (int r = 0; r < RT; ++r) {
                y[r * ldy + n] = hsum8(_mm256_add_ps(acc[0][r], acc[1][r])) + mins[r];
            }
        }
    }
};

// All M activation rows in tiles of four, weight rows [n0, n1).
template <class Kernel, bool Q4>
AVX2_TARGET void gemm_rows(const Act& a, int64_t M, const Weights& w, int64_t n0, int64_t n1,
                           int64_t N, float* y) {
    std::vector<float> scratch(6 * (a.K / kGroup));
    for (int64_t r0 = 0; r0 < M; r0 += 4) {
        float* yr = y + r0 * N;
        float* sp = scratch.data();
        switch (std::min<int64_t>(4, M - r0)) {
            case 1: Kernel::template tile<1, Q4>(a, r0, w, n0, n1, yr, N, sp); break;
            case 2: Kernel::template tile<2, Q4>(a, r0, w, n0, n1, yr, N, sp); break;
            case 3: Kernel::template tile<3, Q4>(a, r0, w, n0, n1, yr, N, sp); break;
            default: Kernel::template tile<4, Q4>(a, r0, w, n0, n1, yr, N, sp); break;
        }
    }
}

inline bool supported() {
    static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           __builtin_cpu_supports("f16c");
    return ok;
}

}  // namespace avx2
