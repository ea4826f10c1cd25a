// Large-M (prefill) matmul of radixrt._quant_cpu: y[M, N] = x[M, K] @ W^T in fp32 straight
// from the group-32 packed weights, AVX2 + FMA (included by quant_cpu.cpp on x86 only).
//
// A blocked GEMM in the BLIS shape, sized for a Zen 3 core (32 KiB L1d, 512 KiB L2):
//   - each thread owns a contiguous range of 16-column panels of W (no barriers, no shared
//     writes); per K block of at most kBlockK it dequantizes its panels into a [kc][16] fp32
//     layout (the packing BLAS would do anyway, so dequantization costs no extra pass);
//   - per kBlockM-row block of x, packed into 6-row tiles [kc][6] (kept in L2), every
//     16-column panel (kc x 16, in L1) is multiplied by each tile: 12 ymm accumulators, two
//     panel loads and six broadcasts per k.
// Exact fp32 math on the dequantized weights (d * q + m); only the summation order differs
// from dequantize + BLAS. Measured against that route by bench/bench_quant_linear.py.

#pragma once

namespace avx2 {

constexpr int kPanel = 16;        // columns of W per panel (two ymm)
constexpr int kTileRows = 6;      // rows of x per micro tile (12 accumulators)
constexpr int64_t kBlockK = 320;  // max K per block: a panel is <= 20 KiB, in L1
constexpr int64_t kBlockM = 144;  // rows of x per block: 144 x 320 x 4 B = 180 KiB, in L2

// Transposes eight rows of eight floats (r[i] = row i) into columns, in place.
AVX2_TARGET inline void transpose8(__m256* r) {
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xee);
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xee);
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xee);
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xee);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// Weight columns [n0, n0 + 16) x k in [k0, k0 + kc) (k0, kc multiples of 32), dequantized
// into out[k - k0][n - n0].
template <bool Q4>
AVX2_TARGET void pack_panel(const Weights& w, int64_t K, int64_t n0, int64_t k0, int64_t kc,
                            float* __restrict__ out) {
    const int64_t nb = K / kGroup;
    for (int64_t g = k0 / kGroup; g < (k0 + kc) / kGroup; ++g) {
        float* og = out + (g * kGroup - k0) * kPanel;
        for (int half = 0; half < 2; ++half) {  // 8 weight rows at a time
            __m256 rows[8][4];
            for (int j = 0; j < 8; ++j) {
                const int64_t gi = (n0 + half * 8 + j) * nb + g;
                group_floats<Q4>(w.qs, gi, _cvtsh_ss(w.d[gi]), rows[j]);
                if (Q4) {
                    const __m256 m = _mm256_set1_ps(_cvtsh_ss(w.m[gi]));
                    for (int i = 0; i < 4; ++i) rows[j][i] = _mm256_add_ps(rows[j][i], m);
                }
            }
            for (int i = 0; i < 4; ++i) {  // k in [8i, 8i + 8) of the group
                __m256 t[8];
                for (int j = 0; j < 8; ++j) t[j] = rows[j][i];
                transpose8(t);
                for (int kk = 0; kk < 8; ++kk) {
                    _mm256_storeu_ps(og + (8 * i + kk) * kPanel + half * 8, t[kk]);
                }
            }
        }
    }
}

// Rows [r0, r0 + R) x k in [k0, k0 + kc) of x (row stride K) -> out[k - k0][r - r0] with
// R padded to kTileRows (zeros): the micro tile then reads its rows as one sequential stream.
AVX2_TARGET inline void pack_rows(const float* x, int64_t K, int64_t r0, int rows, int64_t k0,
                                  int64_t kc, float* __restrict__ out) {
    for (int r = 0; r < kTileRows; ++r) {
        const float* xr = x + (r0 + r) * K + k0;
        if (r < rows) {
            for (int64_t k = 0; k < kc; ++k) out[k * kTileRows + r] = xr[k];
        } else {
            for (int64_t k = 0; k < kc; ++k) out[k * kTileRows + r] = 0.f;
        }
    }
}

// c[R x 16] (+)= packed rows [kc x 6] @ panel [kc x 16] (only the first R rows stored).
AVX2_TARGET inline void micro_tile(int rows, const float* __restrict__ a,
                                   const float* __restrict__ panel, int64_t kc,
                                   float* __restrict__ c, int64_t ldc, bool accumulate) {
    // The tile of y is touched only at the end, six rows apart: fetch it now so that its
    // cache misses overlap the arithmetic.
    for (int r = 0; r < rows; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + 15), _MM_HINT_T0);
    }
    __m256 acc0[kTileRows], acc1[kTileRows];
#pragma GCC unroll 6
    for (int r = 0; r < kTileRows; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; ++k) {
        const __m256 b0 = _mm256_loadu_ps(panel + k * kPanel);
        const __m256 b1 = _mm256_loadu_ps(panel + k * kPanel + 8);
#pragma GCC unroll 6
        for (int r = 0; r < kTileRows; ++r) {
            const __m256 av = _mm256_broadcast_ss(a + k * kTileRows + r);
            acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
            acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < kTileRows; ++r) {
        if (r >= rows) break;
        float* cr = c + r * ldc;
        if (accumulate) {
            acc0[r] = _mm256_add_ps(acc0[r], _mm256_loadu_ps(cr));
            acc1[r] = _mm256_add_ps(acc1[r], _mm256_loadu_ps(cr + 8));
        }
        _mm256_storeu_ps(cr, acc0[r]);
        _mm256_storeu_ps(cr + 8, acc1[r]);
    }
}

// Columns [n0, n1) of y (multiples of 16) for all M rows. `packed` holds (n1 - n0) * kBlockK
// floats (weight panels), `rows` kBlockM * kBlockK (x tiles).
template <bool Q4>
AVX2_TARGET void gemm_panels(const float* x, int64_t M, int64_t K, const Weights& w, int64_t n0,
                             int64_t n1, int64_t N, float* y, float* packed, float* rows) {
    const int64_t panels = (n1 - n0) / kPanel;
    // Even K blocks (multiples of 32): 576 -> 2 x 288 rather than 320 + 256.
    const int64_t kblocks = (K + kBlockK - 1) / kBlockK;
    const int64_t kstep = ((K / kGroup + kblocks - 1) / kblocks) * kGroup;
    for (int64_t k0 = 0; k0 < K; k0 += kstep) {
        const int64_t kc = std::min(kstep, K - k0);
        for (int64_t p = 0; p < panels; ++p) {
            pack_panel<Q4>(w, K, n0 + p * kPanel, k0, kc, packed + p * kc * kPanel);
        }
        for (int64_t m0 = 0; m0 < M; m0 += kBlockM) {
            const int64_t m1 = std::min(M, m0 + kBlockM);
            for (int64_t r = m0; r < m1; r += kTileRows) {
                pack_rows(x, K, r, int(std::min<int64_t>(kTileRows, m1 - r)), k0, kc,
                          rows + (r - m0) * kc);
            }
            for (int64_t p = 0; p < panels; ++p) {
                const float* panel = packed + p * kc * kPanel;
                float* yc = y + n0 + p * kPanel;
                for (int64_t r = m0; r < m1; r += kTileRows) {
                    micro_tile(int(std::min<int64_t>(kTileRows, m1 - r)), rows + (r - m0) * kc,
                               panel, kc, yc + r * N, N, k0 > 0);
                }
            }
        }
    }
}

}  // namespace avx2
