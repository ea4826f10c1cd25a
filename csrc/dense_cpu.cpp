// radixrt._dense_cpu: y[M, N] = x[M, K] @ W^T from float32, bfloat16 or float16 weights with one
// summation order per output element, whatever M, the tile or the thread count: the engine's
// --deterministic on a float checkpoint. torch's BLAS picks kernel, blocking and K split by
// the shape, so there a row's result depends on how many rows share the call.
//
// The order: output (m, n) is lane l of an 8-wide accumulator holding the fused multiply-add
// sum of x[m, k] * W[n, k] over k = l, l + 8, ... (k below K rounded down to 8), in k order;
// the lanes added as hsum8 adds them; then the K % 8 tail, one fused multiply-add at a time.
// Tiles (up to 4 activation rows by up to 6 weight rows) only decide which registers hold
// which (m, n). The portable loops follow the same order with fmaf, so they give the AVX2
// kernel's bits (tests/unit/test_deterministic.py compares them).
//
// Accumulation in fp32; bf16 and fp16 inputs are widened exactly, so fp32 activations times
// 16-bit weights (a checkpoint kept as published, half the bytes a decode step reads) give the
// bits of the same activations times those weights widened to fp32. No torch headers: Python
// passes data pointers and checks dtypes, shapes and contiguity (radixrt/models/dense_cpu.py).

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>

#include "cpu_threads.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RADIXRT_X86 1
#endif

namespace py = pybind11;

namespace {

constexpr int kRowTile = 4;
// Weight bytes per block that all row tiles go through before the next (stays in L2).
constexpr int64_t kBlockBytes = 192 * 1024;

// 16-bit storage types, told apart by type (both are 16 bits of a tensor).
struct BF16 {
    uint16_t bits;
};
struct F16 {
    uint16_t bits;
};
static_assert(sizeof(BF16) == 2 && sizeof(F16) == 2, "16-bit storage");

inline float from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline float widen(float v) { return v; }
inline float widen(BF16 h) { return from_bits(static_cast<uint32_t>(h.bits) << 16); }  // exact
inline float widen(F16 h) {  // exact, subnormals, infinities and NaNs included
    const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
    const uint32_t exp = (h.bits >> 10) & 0x1fu;
    uint32_t man = h.bits & 0x3ffu;
    if (exp == 31) return from_bits(sign | 0x7f800000u | (man << 13));
    if (exp != 0) return from_bits(sign | ((exp + 112) << 23) | (man << 13));
    if (man == 0) return from_bits(sign);
    uint32_t e = 113;  // a subnormal man * 2^-24: normalise it
    while (!(man & 0x400u)) {
        man <<= 1;
        --e;
    }
    return from_bits(sign | (e << 23) | ((man & 0x3ffu) << 13));
}

// The lanes' sum, in the order of the AVX2 hsum8 below: (0+4) + (2+6), then (1+5) + (3+7).
inline float hsum_lanes(const float* a) {
    const float s0 = a[0] + a[4], s1 = a[1] + a[5], s2 = a[2] + a[6], s3 = a[3] + a[7];
    return (s0 + s2) + (s1 + s3);
}

// ------------------------------------------------------------------------------ portable

template <typename TX, typename TW>
void rows_portable(const TX* x, int64_t M, int64_t K, const TW* w, int64_t n0, int64_t n1,
                   int64_t N, float* y) {
    const int64_t k8 = K & ~int64_t{7};
    for (int64_t n = n0; n < n1; ++n) {
        const TW* wr = w + n * K;
        for (int64_t m = 0; m < M; ++m) {
            const TX* xr = x + m * K;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t k = 0; k < k8; k += 8) {
                for (int l = 0; l < 8; ++l) acc[l] = std::fmaf(widen(xr[k + l]), widen(wr[k + l]), acc[l]);
            }
            float s = hsum_lanes(acc);
            for (int64_t k = k8; k < K; ++k) s = std::fmaf(widen(xr[k]), widen(wr[k]), s);
            y[m * N + n] = s;
        }
    }
}

// ---------------------------------------------------------------------------------- AVX2

#ifdef RADIXRT_X86
#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

bool has_avx2() {  // every AVX2 CPU has F16C too; checked all the same
    static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           __builtin_cpu_supports("f16c");
    return ok;
}

AVX2_TARGET inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
AVX2_TARGET inline __m256 load8(const BF16* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
AVX2_TARGET inline __m256 load8(const F16* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

AVX2_TARGET inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// y[r * ldy + j] for RT activation rows at x (row stride K) and NW weight rows at w.
template <int RT, int NW, typename TX, typename TW>
AVX2_TARGET void tile(const TX* x, int64_t K, const TW* w, float* y, int64_t ldy) {
    const int64_t k8 = K & ~int64_t{7};
    __m256 acc[RT][NW];
    for (int r = 0; r < RT; ++r)
        for (int j = 0; j < NW; ++j) acc[r][j] = _mm256_setzero_ps();
    for (int64_t k = 0; k < k8; k += 8) {
        __m256 wv[NW];
        for (int j = 0; j < NW; ++j) wv[j] = load8(w + j * K + k);
        for (int r = 0; r < RT; ++r) {
            const __m256 xv = load8(x + r * K + k);
            for (int j = 0; j < NW; ++j) acc[r][j] = _mm256_fmadd_ps(xv, wv[j], acc[r][j]);
        }
    }
    for (int r = 0; r < RT; ++r) {
        for (int j = 0; j < NW; ++j) {
            float s = hsum8(acc[r][j]);
            for (int64_t k = k8; k < K; ++k) s = std::fmaf(widen(x[r * K + k]), widen(w[j * K + k]), s);
            y[r * ldy + j] = s;
        }
    }
}

// Weight rows per tile by activation rows in it: as many accumulators as the 16 ymm
// registers hold beside the weight vectors and one activation vector.
template <int RT>
constexpr int weight_rows() {
    return RT == 1 ? 6 : RT == 2 ? 4 : 3;
}

template <int RT, typename TX, typename TW>
AVX2_TARGET void row_tile(const TX* x, int64_t K, const TW* w, int64_t n0, int64_t n1, float* y,
                          int64_t N) {
    constexpr int NW = weight_rows<RT>();
    int64_t n = n0;
    for (; n + NW <= n1; n += NW) tile<RT, NW>(x, K, w + n * K, y + n, N);
    for (; n < n1; ++n) tile<RT, 1>(x, K, w + n * K, y + n, N);
}

template <typename TX, typename TW>
AVX2_TARGET void rows_avx2(const TX* x, int64_t M, int64_t K, const TW* w, int64_t n0,
                           int64_t n1, int64_t N, float* y) {
    const int64_t block = std::max<int64_t>(12, kBlockBytes / (K * int64_t{sizeof(TW)}));
    for (int64_t b0 = n0; b0 < n1; b0 += block) {
        const int64_t b1 = std::min(n1, b0 + block);
        for (int64_t r0 = 0; r0 < M; r0 += kRowTile) {
            const TX* xr = x + r0 * K;
            float* yr = y + r0 * N;
            switch (std::min<int64_t>(kRowTile, M - r0)) {
                case 1: row_tile<1>(xr, K, w, b0, b1, yr, N); break;
                case 2: row_tile<2>(xr, K, w, b0, b1, yr, N); break;
                case 3: row_tile<3>(xr, K, w, b0, b1, yr, N); break;
                default: row_tile<4>(xr, K, w, b0, b1, yr, N); break;
            }
        }
    }
}
#else
bool has_avx2() { return false; }
#endif

// ------------------------------------------------------------------------------- driver

// Multiply-adds below which one thread does the call (waking the pool costs more).
constexpr int64_t kParallelWork = int64_t{1} << 16;

template <typename TX, typename TW>
void matmul_typed(const TX* x, int64_t M, int64_t K, const TW* w, int64_t N, float* y,
                  int nthreads, bool portable) {
    py::gil_scoped_release release;
    // Each output is computed whole by one thread, so the split never changes a result.
    const int nt = M * N * K < kParallelWork ? 1 : nthreads;
    radixrt::parallel_rows(N, nt, [&](int64_t a, int64_t b) {
#ifdef RADIXRT_X86
        if (!portable && has_avx2()) {
            rows_avx2(x, M, K, w, a, b, N, y);
            return;
        }
#endif
        rows_portable(x, M, K, w, a, b, N, y);
    });
}

// Storage codes of the Python side: 0 fp32, 1 bf16, 2 fp16.
enum Code : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

template <typename TX>
void matmul_weights(const TX* x, int64_t M, int64_t K, uintptr_t w, int w_code, int64_t N,
                    float* y, int nthreads, bool portable) {
    switch (w_code) {
        case kF32:
            return matmul_typed(x, M, K, reinterpret_cast<const float*>(w), N, y, nthreads,
                                portable);
        case kBF16:
            return matmul_typed(x, M, K, reinterpret_cast<const BF16*>(w), N, y, nthreads,
                                portable);
        case kF16:
            return matmul_typed(x, M, K, reinterpret_cast<const F16*>(w), N, y, nthreads,
                                portable);
        default:
            throw std::invalid_argument("dense_cpu: unknown weight code");
    }
}

void matmul(uintptr_t x, int64_t M, int64_t K, uintptr_t w, int64_t N, uintptr_t y, int x_code,
            int w_code, int nthreads, bool portable) {
    if (M < 0 || K <= 0 || N <= 0) {
        throw std::invalid_argument("dense_cpu: need M >= 0, K > 0 and N > 0");
    }
    if (M == 0) return;  // an empty x or y may have no storage
    if (x == 0 || w == 0 || y == 0) throw std::invalid_argument("dense_cpu: null pointer");
    float* yp = reinterpret_cast<float*>(y);
    if (x_code == kBF16 && w_code == kBF16) {
        matmul_typed(reinterpret_cast<const BF16*>(x), M, K, reinterpret_cast<const BF16*>(w), N,
                     yp, nthreads, portable);
    } else if (x_code == kF32) {
        matmul_weights(reinterpret_cast<const float*>(x), M, K, w, w_code, N, yp, nthreads,
                       portable);
    } else {
        throw std::invalid_argument("dense_cpu: fp32 activations (any weights) or bf16 x bf16");
    }
}

}  // namespace

PYBIND11_MODULE(_dense_cpu, mod) {
    mod.doc() = "Dense matmuls with one summation order per output (batch-invariant)";
    mod.def("matmul", &matmul, py::arg("x"), py::arg("M"), py::arg("K"), py::arg("w"),
            py::arg("N"), py::arg("y"), py::arg("x_code"), py::arg("w_code"),
            py::arg("nthreads") = 0, py::arg("portable") = false,
            "y[M,N] (fp32) = x[M,K] @ W[N,K]^T (contiguous); codes 0 fp32, 1 bf16, 2 fp16: "
            "fp32 x with any W, or bf16 x bf16; portable: the scalar loops (the same bits) "
            "instead of AVX2");
    mod.def("has_avx2", &has_avx2, "the AVX2 kernel runs on this CPU");
}
