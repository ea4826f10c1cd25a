// radixrt._quant_cpu: matmuls straight from group-32 quantized weights (CPU, OpenMP).
//
// Formats (one output row after another, groups of 32 along the input dim, like GGUF):
//   q4 (GGUF Q4_1 math): w = d * q + m, q in 0..15. qs uint8 [N, K/2]: byte i of a group
//       holds weight i (low nibble) and weight i + 16 (high nibble). d, m fp16 [N, K/32].
//   q8 (GGUF Q8_0 math): w = d * q, q int8. qs int8 [N, K]. d fp16 [N, K/32].
//
// No torch headers (the extension builds in pip's isolated env): Python passes data_ptr()s
// and sizes and checks dtypes, shapes and contiguity first (radixrt/models/quant.py).
// OpenMP: imported after torch, this uses torch's libgomp (same soname) and thread pool.
//
// Small M (decode): matmuls straight from the packed weights, parallel over weight rows.
//   portable: fp32 activations; loops GCC auto-vectorizes, built per ISA (target_clones).
//   AVX2 (quant_cpu_avx2.h): the default where the CPU has AVX2 + FMA + F16C, fp32
//           activations; and an opt-in int8-activation variant (llama.cpp's trick).
// Large M (prefill): a blocked fp32 GEMM that dequantizes the weights as it packs them
//   (quant_cpu_gemm_avx2.h) where the CPU has AVX2; elsewhere Python dequantizes to fp32
//   (dequant_*) and torch's BLAS does the matmul.
// All tested against a dequantize-then-matmul reference (tests/unit/test_quant_kernels.py).

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "cpu_threads.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RADIXRT_X86 1
#endif

namespace py = pybind11;

namespace {

constexpr int64_t kGroup = 32;

#if defined(RADIXRT_X86) && defined(__GNUC__) && !defined(__clang__)
// x86-64-v4 = AVX-512 (F/BW/DQ/VL), x86-64-v3 = AVX2 + FMA + F16C (a comma in target_clones
// separates clones, so "avx2,fma" would make two clones, each without the other).
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

// IEEE half -> float, portable (subnormals, inf and nan included).
inline float h2f(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {  // subnormal half: value = man * 2^-24, exact in float
            float f = float(man) * (1.0f / 16777216.0f);
            std::memcpy(&bits, &f, 4);
            bits |= sign;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

// ------------------------------------------------------------------ dequantize (portable)

// One q4 group -> 32 floats. `omp simd` makes GCC loop-vectorize these short loops (left to
// itself it unrolls them first and then builds the byte vectors element by element).
inline void dequant_q4_group(const uint8_t* __restrict__ q, float db, float mb,
                             float* __restrict__ o) {
#pragma omp simd
    for (int j = 0; j < 16; ++j) {
        o[j] = float(q[j] & 15) * db + mb;
        o[j + 16] = float(q[j] >> 4) * db + mb;
    }
}

inline void dequant_q8_group(const int8_t* __restrict__ q, float db, float* __restrict__ o) {
#pragma omp simd
    for (int j = 0; j < kGroup; ++j) o[j] = float(q[j]) * db;
}

// Weight rows [n0, n1) -> out (fp32, row n at out + (n - n0) * K).
CLONES void dequant_q4_rows(const uint8_t* __restrict__ qs, const uint16_t* d,
                            const uint16_t* m, int64_t n0, int64_t n1, int64_t K,
                            float* __restrict__ out) {
    const int64_t nb = K / kGroup;
    for (int64_t g = n0 * nb; g < n1 * nb; ++g) {
        dequant_q4_group(qs + g * 16, h2f(d[g]), h2f(m[g]), out + (g - n0 * nb) * kGroup);
    }
}

CLONES void dequant_q8_rows(const int8_t* __restrict__ qs, const uint16_t* d, int64_t n0,
                            int64_t n1, int64_t K, float* __restrict__ out) {
    const int64_t nb = K / kGroup;
    for (int64_t g = n0 * nb; g < n1 * nb; ++g) {
        dequant_q8_group(qs + g * kGroup, h2f(d[g]), out + (g - n0 * nb) * kGroup);
    }
}

// ------------------------------------------------------- fp32 activations (portable GEMV)

// 16 lanes = two independent 8-wide FMA chains (AVX2) or one 16-wide one (AVX-512).
inline float dot(const float* __restrict__ a, const float* __restrict__ b, int64_t K) {
    float acc[16] = {};
    for (int64_t k = 0; k < K; k += 16) {
        for (int l = 0; l < 16; ++l) acc[l] += a[k + l] * b[k + l];
    }
    float s = 0.f;
    for (int l = 0; l < 16; ++l) s += acc[l];
    return s;
}

// Rows [n0, n1) of y[M, N] = x[M, K] @ W^T: each weight row is dequantized once into an L1
// buffer, then dotted with every activation row. (K is a multiple of 32.)
CLONES void gemm_q4_f32_rows(const float* x, int64_t M, int64_t K, const uint8_t* qs,
                             const uint16_t* d, const uint16_t* m, int64_t n0, int64_t n1,
                             int64_t N, float* y) {
    std::vector<float> w(K);
    for (int64_t n = n0; n < n1; ++n) {
        dequant_q4_rows(qs, d, m, n, n + 1, K, w.data());
        for (int64_t r = 0; r < M; ++r) y[r * N + n] = dot(w.data(), x + r * K, K);
    }
}

CLONES void gemm_q8_f32_rows(const float* x, int64_t M, int64_t K, const int8_t* qs,
                             const uint16_t* d, int64_t n0, int64_t n1, int64_t N, float* y) {
    std::vector<float> w(K);
    for (int64_t n = n0; n < n1; ++n) {
        dequant_q8_rows(qs, d, n, n + 1, K, w.data());
        for (int64_t r = 0; r < M; ++r) y[r * N + n] = dot(w.data(), x + r * K, K);
    }
}

#ifdef RADIXRT_X86
#include "quant_cpu_avx2.h"
#include "quant_cpu_gemm_avx2.h"
#endif

bool cpu_has_avx2() {
#ifdef RADIXRT_X86
    return avx2::supported();
#else
    return false;
#endif
}

void check(int64_t M, int64_t K, int64_t N) {
    if (M < 0 || N <= 0 || K <= 0 || K % kGroup != 0) {
        throw std::invalid_argument("quant_cpu: need M >= 0, N > 0 and K a positive multiple of 32");
    }
}

template <typename T>
T* ptr(uintptr_t p) {
    if (p == 0) throw std::invalid_argument("quant_cpu: null pointer");
    return reinterpret_cast<T*>(p);
}

// Kernel choice. kAuto: fp32 activations, AVX2 where the CPU has it (kI8 is faster but
// moves logits, see quant_cpu_avx2.h); kPortable: the auto-vectorized loops; kBlocked: the
// large-M blocked GEMM (AVX2, N a multiple of 16); kInvariant: fp32 activations with one
// summation order for every row whatever M (AVX2; the portable loops have that already).
enum Path { kAuto = 0, kF32 = 1, kI8 = 2, kPortable = 3, kBlocked = 4, kInvariant = 5 };

Path pick(int path) {
    if (path < kAuto || path > kInvariant) {
        throw std::invalid_argument("quant_cpu: path must be 0..5");
    }
    if ((path == kI8 || path == kBlocked) && !cpu_has_avx2()) {
        throw std::invalid_argument("quant_cpu: the int8 and blocked paths need AVX2");
    }
    if (path == kAuto || path == kF32) return cpu_has_avx2() ? kF32 : kPortable;
    if (path == kInvariant) return cpu_has_avx2() ? kInvariant : kPortable;
    return static_cast<Path>(path);
}

#ifdef RADIXRT_X86
// Activation scratch of the AVX2 paths, reused across calls of the (single) calling thread.
struct ActScratch {
    std::vector<float> xs, xd;
    std::vector<int8_t> xq;
    avx2::Act prepare(const float* x, int64_t M, int64_t K, bool i8) {
        const int64_t groups = M * (K / kGroup);
        xs.resize(groups);
        if (i8) {
            xq.resize(M * K);
            xd.resize(groups);
        }
        avx2::prepare(x, groups, xs.data(), i8 ? xq.data() : nullptr, xd.data());
        return {x, xs.data(), xq.data(), xd.data(), K};
    }
};
thread_local ActScratch g_act;

// Per-thread panel buffer of the blocked GEMM (OpenMP pool threads persist across calls).
thread_local std::vector<float> g_packed, g_rows;

void gemm_blocked(int bits, const float* x, int64_t M, int64_t K, const avx2::Weights& w,
                  int64_t N, float* y, int nthreads) {
    if (N % avx2::kPanel != 0) {
        throw std::invalid_argument("quant_cpu: the blocked path needs N a multiple of 16");
    }
    // Whole panels per thread, so that no two threads write the same cache line of y.
    radixrt::parallel_rows(N / avx2::kPanel, nthreads, [&](int64_t a, int64_t b) {
        g_packed.resize((b - a) * avx2::kPanel * avx2::kBlockK);
        g_rows.resize(avx2::kBlockM * avx2::kBlockK);
        const int64_t n0 = a * avx2::kPanel, n1 = b * avx2::kPanel;
        float *packed = g_packed.data(), *rows = g_rows.data();
        bits == 4 ? avx2::gemm_panels<true>(x, M, K, w, n0, n1, N, y, packed, rows)
                  : avx2::gemm_panels<false>(x, M, K, w, n0, n1, N, y, packed, rows);
    }, 1);
}
#endif

// y[M, N] = x[M, K] @ W^T for q4 (bits 4; m given) or q8 (bits 8) weights.
void gemm(int bits, uintptr_t x, int64_t M, int64_t K, uintptr_t qs, uintptr_t d, uintptr_t m,
          int64_t N, uintptr_t y, int nthreads, int path) {
    check(M, K, N);
    const Path p = pick(path);
    if (M == 0) return;
    const float* xp = ptr<const float>(x);
    const uint8_t* qp = ptr<const uint8_t>(qs);
    const uint16_t* dp = ptr<const uint16_t>(d);
    const uint16_t* mp = bits == 4 ? ptr<const uint16_t>(m) : nullptr;
    float* yp = ptr<float>(y);
    py::gil_scoped_release release;
#ifdef RADIXRT_X86
    if (p == kBlocked) {
        gemm_blocked(bits, xp, M, K, avx2::Weights{qp, dp, mp}, N, yp, nthreads);
        return;
    }
    if (p == kF32 || p == kI8 || p == kInvariant) {
        // The f32 kernels read x alone; group sums and int8 rows are the i8 path's.
        const avx2::Act act = p == kI8 ? g_act.prepare(xp, M, K, true)
                                       : avx2::Act{xp, nullptr, nullptr, nullptr, K};
        const avx2::Weights w{qp, dp, mp};
        radixrt::parallel_rows(N, nthreads, [&](int64_t a, int64_t b) {
            if (p == kI8) {
                bits == 4 ? avx2::gemm_rows<avx2::I8Kernel, true>(act, M, w, a, b, N, yp)
                          : avx2::gemm_rows<avx2::I8Kernel, false>(act, M, w, a, b, N, yp);
            } else if (p == kInvariant) {
                bits == 4
                    ? avx2::gemm_rows<avx2::F32InvariantKernel, true>(act, M, w, a, b, N, yp)
                    : avx2::gemm_rows<avx2::F32InvariantKernel, false>(act, M, w, a, b, N, yp);
            } else {
                bits == 4 ? avx2::gemm_rows<avx2::F32Kernel, true>(act, M, w, a, b, N, yp)
                          : avx2::gemm_rows<avx2::F32Kernel, false>(act, M, w, a, b, N, yp);
            }
        });
        return;
    }
#endif
    radixrt::parallel_rows(N, nthreads, [&](int64_t a, int64_t b) {
        if (bits == 4) {
            gemm_q4_f32_rows(xp, M, K, qp, dp, mp, a, b, N, yp);
        } else {
            gemm_q8_f32_rows(xp, M, K, reinterpret_cast<const int8_t*>(qp), dp, a, b, N, yp);
        }
    });
}

// out[N, K] (fp32) = the dequantized weights.
void dequant(int bits, uintptr_t qs, uintptr_t d, uintptr_t m, int64_t N, int64_t K,
             uintptr_t out, int nthreads) {
    check(0, K, N);
    const uint8_t* qp = ptr<const uint8_t>(qs);
    const uint16_t* dp = ptr<const uint16_t>(d);
    const uint16_t* mp = bits == 4 ? ptr<const uint16_t>(m) : nullptr;
    float* op = ptr<float>(out);
    py::gil_scoped_release release;
    radixrt::parallel_rows(N, nthreads, [&](int64_t a, int64_t b) {
        if (bits == 4) {
            dequant_q4_rows(qp, dp, mp, a, b, K, op + a * K);
        } else {
            dequant_q8_rows(reinterpret_cast<const int8_t*>(qp), dp, a, b, K, op + a * K);
        }
    });
}

// out[t] = dequantized row ids[t] of a q8 table [V, K] (embedding lookup); ids checked < V.
void embed_q8(uintptr_t ids, int64_t T, uintptr_t qs, uintptr_t d, int64_t V, int64_t K,
              uintptr_t out) {
    check(0, K, V);
    if (T == 0) return;
    const int64_t* ip = ptr<const int64_t>(ids);
    for (int64_t t = 0; t < T; ++t) {
        if (ip[t] < 0 || ip[t] >= V) throw std::out_of_range("quant_cpu: token id out of range");
    }
    const int8_t* qp = ptr<const int8_t>(qs);
    const uint16_t* dp = ptr<const uint16_t>(d);
    float* op = ptr<float>(out);
    for (int64_t t = 0; t < T; ++t) {
        const int64_t row = ip[t];
        dequant_q8_rows(qp, dp, row, row + 1, K, op + t * K);
    }
}

int max_threads() { return radixrt::threads(0); }

}  // namespace

PYBIND11_MODULE(_quant_cpu, mod) {
    mod.doc() = "Matmuls from group-32 int4 (Q4_1 math) and int8 (Q8_0 math) weights";
    mod.def("gemm_q4",
            [](uintptr_t x, int64_t M, int64_t K, uintptr_t qs, uintptr_t d, uintptr_t m,
               int64_t N, uintptr_t y, int nthreads, int path) {
                gemm(4, x, M, K, qs, d, m, N, y, nthreads, path);
            },
            py::arg("x"), py::arg("M"), py::arg("K"), py::arg("qs"), py::arg("d"), py::arg("m"),
            py::arg("N"), py::arg("y"), py::arg("nthreads") = 0, py::arg("path") = 0,
            "y[M,N] = x[M,K] (fp32) @ W^T for q4 weights. path: 0 auto (= 1), 1 fp32 "
            "activations (AVX2 where available), 2 int8 activations (AVX2), 3 portable loops, "
            "4 blocked large-M GEMM (AVX2, N a multiple of 16)");
    mod.def("gemm_q8",
            [](uintptr_t x, int64_t M, int64_t K, uintptr_t qs, uintptr_t d, int64_t N,
               uintptr_t y, int nthreads, int path) {
                gemm(8, x, M, K, qs, d, 0, N, y, nthreads, path);
            },
            py::arg("x"), py::arg("M"), py::arg("K"), py::arg("qs"), py::arg("d"), py::arg("N"),
            py::arg("y"), py::arg("nthreads") = 0, py::arg("path") = 0,
            "y[M,N] = x[M,K] (fp32) @ W^T for q8 weights; path as gemm_q4");
    mod.def("dequant_q4",
            [](uintptr_t qs, uintptr_t d, uintptr_t m, int64_t N, int64_t K, uintptr_t out,
               int nthreads) { dequant(4, qs, d, m, N, K, out, nthreads); },
            py::arg("qs"), py::arg("d"), py::arg("m"), py::arg("N"), py::arg("K"), py::arg("out"),
            py::arg("nthreads") = 0, "out[N,K] (fp32) = dequantized q4 weights");
    mod.def("dequant_q8",
            [](uintptr_t qs, uintptr_t d, int64_t N, int64_t K, uintptr_t out, int nthreads) {
                dequant(8, qs, d, 0, N, K, out, nthreads);
            },
            py::arg("qs"), py::arg("d"), py::arg("N"), py::arg("K"), py::arg("out"),
            py::arg("nthreads") = 0, "out[N,K] (fp32) = dequantized q8 weights");
    mod.def("embed_q8", &embed_q8, py::arg("ids"), py::arg("T"), py::arg("qs"), py::arg("d"),
            py::arg("V"), py::arg("K"), py::arg("out"),
            "out[T,K] (fp32) = rows ids[T] (int64) of a q8 table [V,K]");
    mod.def("has_avx2", &cpu_has_avx2, "the int8-activation (AVX2) path is available");
    mod.def("max_threads", &max_threads, "OpenMP threads used when nthreads is 0");
}
