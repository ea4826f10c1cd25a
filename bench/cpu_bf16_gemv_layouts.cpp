// Batch-1 GEMV over bf16 weights, five ways, to see what limits csrc/dense_cpu.cpp's bf16 loop
// (docs/benchmarks.md, "16-bit checkpoints keep their 16-bit matrices"). Not part of the build:
//   g++ -O3 -fopenmp -o /tmp/bf16_gemv bench/cpu_bf16_gemv_layouts.cpp
//   OMP_NUM_THREADS=1 /tmp/bf16_gemv; OMP_NUM_THREADS=2 /tmp/bf16_gemv
// rowmajor: the kernel's loop (6 weight rows, 8 bf16 per row per step); rowmajor2: 16 per step
// (one 32-byte load widened in two halves); packed: the 6 rows interleaved into one stream,
// pairs widened by one shift or mask; packed_plain: that layout, the kernel's widening;
// rowmajor_f32: float32 weights in the kernel's loop. GB/s of weights, median of 7, 8 matrices
// of K 2048 x 8196 rows in rotation (beyond the caches).
#include <immintrin.h>
#include <omp.h>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>
#include <algorithm>
__attribute__((target("avx2,fma"))) static inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s)); s = _mm_add_ss(s, _mm_movehdup_ps(s)); return _mm_cvtss_f32(s);
}
__attribute__((target("avx2,fma"))) static inline __m256 ld(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
// current: row-major
__attribute__((target("avx2,fma"))) void rowmajor(const float* x, const uint16_t* w, int K, int N, float* y) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n += 6) {
    __m256 a[6]; for (int j = 0; j < 6; ++j) a[j] = _mm256_setzero_ps();
    for (int k = 0; k < K; k += 8) {
      __m256 xv = _mm256_loadu_ps(x + k);
      for (int j = 0; j < 6; ++j) a[j] = _mm256_fmadd_ps(xv, ld(w + (size_t)(n + j) * K + k), a[j]);
    }
    for (int j = 0; j < 6; ++j) y[n + j] = hsum8(a[j]);
  }
}
// row-major, 16 k per iteration: one 32-byte load per row, widened in two halves
__attribute__((target("avx2,fma"))) void rowmajor2(const float* x, const uint16_t* w, int K, int N, float* y) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n += 6) {
    __m256 a[6]; for (int j = 0; j < 6; ++j) a[j] = _mm256_setzero_ps();
    for (int k = 0; k < K; k += 16) {
      __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
      for (int j = 0; j < 6; ++j) {
        __m256i v = _mm256_loadu_si256((const __m256i*)(w + (size_t)(n + j) * K + k));
        __m256 lo = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(v)), 16));
        __m256 hi = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(v, 1)), 16));
        a[j] = _mm256_fmadd_ps(x0, lo, a[j]);
        a[j] = _mm256_fmadd_ps(x1, hi, a[j]);
      }
    }
    for (int j = 0; j < 6; ++j) y[n + j] = hsum8(a[j]);
  }
}
// packed: per 6-row group, per 16-k block, per row: 16 bf16 interleaved [k0 k8 k1 k9 ...]
__attribute__((target("avx2,fma"))) void packed(const float* x, const uint16_t* w, int K, int N, float* y) {
  const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n += 6) {
    const uint16_t* g = w + (size_t)n * K;
    __m256 a[6]; for (int j = 0; j < 6; ++j) a[j] = _mm256_setzero_ps();
    for (int k = 0; k < K; k += 16) {
      __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
      for (int j = 0; j < 6; ++j) {
        __m256i v = _mm256_loadu_si256((const __m256i*)(g + (size_t)k * 6 + j * 16));
        a[j] = _mm256_fmadd_ps(x0, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), a[j]);
        a[j] = _mm256_fmadd_ps(x1, _mm256_castsi256_ps(_mm256_and_si256(v, hi)), a[j]);
      }
    }
    for (int j = 0; j < 6; ++j) y[n + j] = hsum8(a[j]);
  }
}
// packed layout, plain widen (natural order within 16 block), to separate stream vs widen effects
__attribute__((target("avx2,fma"))) void packed_plain(const float* x, const uint16_t* w, int K, int N, float* y) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n += 6) {
    const uint16_t* g = w + (size_t)n * K;
    __m256 a[6]; for (int j = 0; j < 6; ++j) a[j] = _mm256_setzero_ps();
    for (int k = 0; k < K; k += 16) {
      __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
      for (int j = 0; j < 6; ++j) {
        a[j] = _mm256_fmadd_ps(x0, ld(g + (size_t)k * 6 + j * 16), a[j]);
        a[j] = _mm256_fmadd_ps(x1, ld(g + (size_t)k * 6 + j * 16 + 8), a[j]);
      }
    }
    for (int j = 0; j < 6; ++j) y[n + j] = hsum8(a[j]);
  }
}
__attribute__((target("avx2,fma"))) void rowmajor_f32(const float* x, const float* w, int K, int N, float* y) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n += 6) {
    __m256 a[6]; for (int j = 0; j < 6; ++j) a[j] = _mm256_setzero_ps();
    for (int k = 0; k < K; k += 8) {
      __m256 xv = _mm256_loadu_ps(x + k);
      for (int j = 0; j < 6; ++j) a[j] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + (size_t)(n + j) * K + k), a[j]);
    }
    for (int j = 0; j < 6; ++j) y[n + j] = hsum8(a[j]);
  }
}
int main(int argc, char** argv) {
  int K = argc > 1 ? atoi(argv[1]) : 2048, N = 6 * (argc > 2 ? atoi(argv[2]) : 1366);
  int R = 8;
  std::vector<std::vector<uint16_t>> W(R, std::vector<uint16_t>((size_t)N * K));
  for (auto& v : W) for (size_t i = 0; i < v.size(); ++i) v[i] = 0x3f80 + (i % 7);
  std::vector<float> x(K, 0.5f), y(N);
  auto run = [&](auto f, const char* name) {
    std::vector<double> ts;
    for (int rep = 0; rep < 7; ++rep) {
      auto t0 = std::chrono::steady_clock::now();
      for (int r = 0; r < R; ++r) f(x.data(), W[r].data(), K, N, y.data());
      ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / R);
    }
    std::sort(ts.begin(), ts.end());
    printf("%-13s threads %d: %.1f GB/s\n", name, omp_get_max_threads(), (double)N * K * 2 / ts[3] / 1e9);
  };
  {
    std::vector<std::vector<float>> F(R, std::vector<float>((size_t)N * K / 2, 1.0f));
    for (int i = 0; i < 2; ++i) {
      std::vector<double> ts;
      for (int rep = 0; rep < 7; ++rep) {
        auto t0 = std::chrono::steady_clock::now();
        for (int r = 0; r < R; ++r) rowmajor_f32(x.data(), F[r].data(), K, N / 2, y.data());
        ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / R);
      }
      std::sort(ts.begin(), ts.end());
      printf("%-13s threads %d: %.1f GB/s\n", "rowmajor_f32", omp_get_max_threads(), (double)N * K * 2 / ts[3] / 1e9);
    }
  }
  for (int i = 0; i < 2; ++i) { run(rowmajor, "rowmajor"); run(rowmajor2, "rowmajor2"); run(packed, "packed"); run(packed_plain, "packed_plain"); }
}
