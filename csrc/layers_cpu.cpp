// radixrt._layers_cpu: the decoder's elementwise layers fused for the CPU: RMSNorm (with the
// residual add before it) and the rotary embedding applied in place.
//
// Why: at decode batch sizes each torch op costs more in dispatch than in arithmetic; a layer
// spent ~35 ops (~8 ms a step on the default model) on norms and RoPE alone. Each of these
// is one call here.
//
// Same math as the torch path (radixrt/models/layers.py), rounding where it rounds: a bf16
// residual sum is rounded before it is normalised, the normalised row is rounded before the
// weight multiplies it, RoPE works in fp32 and rounds once. Built with -ffp-contract=off so
// products are never fused into FMAs: RoPE is then bit-identical to torch; RMSNorm differs
// only in the order of its sum of squares.
//
// No torch headers (pip's isolated build has none): Python passes data pointers and has
// checked dtypes and layouts (radixrt/models/fused.py).

#include <omp.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace py = pybind11;

namespace {

inline float bf16_to_f32(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {  // round to nearest even, as torch does
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

struct F32 {
  using T = float;
  static float load(T v) { return v; }
  static T store(float v) { return v; }
  static float round(float v) { return v; }
};

struct BF16 {
  using T = uint16_t;
  static float load(T v) { return bf16_to_f32(v); }
  static T store(float v) { return f32_to_bf16(v); }
  static float round(float v) { return bf16_to_f32(f32_to_bf16(v)); }
};

// Rows above which the work is split over OpenMP threads (below, a fork costs more).
constexpr int64_t kParallelRows = 16;

template <class D>
void rmsnorm(const typename D::T* x, int64_t x_stride, typename D::T* res, int64_t res_stride,
             const typename D::T* w, typename D::T* out, int64_t out_stride, int64_t rows,
             int64_t dim, float eps) {
  using T = typename D::T;
#pragma omp parallel for schedule(static) if (rows >= kParallelRows)
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> s(static_cast<size_t>(dim));
    const T* xr = x + r * x_stride;
    T* rr = res == nullptr ? nullptr : res + r * res_stride;
    // Eight partial sums: vectorizes without -ffast-math and stays deterministic.
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= dim; j += 8) {
      for (int l = 0; l < 8; ++l) {
        float v = D::load(xr[j + l]);
        if (rr != nullptr) {
          v = D::round(v + D::load(rr[j + l]));
          rr[j + l] = D::store(v);
        }
        s[j + l] = v;
        acc[l] += v * v;
      }
    }
    for (; j < dim; ++j) {
      float v = D::load(xr[j]);
      if (rr != nullptr) {
        v = D::round(v + D::load(rr[j]));
        rr[j] = D::store(v);
      }
      s[j] = v;
      acc[0] += v * v;
    }
    const float ss = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
    T* o = out + r * out_stride;
    for (int64_t i = 0; i < dim; ++i) o[i] = D::store(D::load(w[i]) * D::round(s[i] * inv));
  }
}

// Neox-style rotation (HF rotate_half) of `heads` heads of each token row, in place.
template <class D>
void rotate(typename D::T* x, int64_t stride, int heads, int head_dim, const int64_t* pos,
            const float* cos, const float* sin, int64_t rows) {
  const int half = head_dim / 2;
#pragma omp parallel for schedule(static) if (rows >= kParallelRows)
  for (int64_t t = 0; t < rows; ++t) {
    const float* c = cos + pos[t] * half;
    const float* s = sin + pos[t] * half;
    for (int h = 0; h < heads; ++h) {
      typename D::T* v = x + t * stride + static_cast<int64_t>(h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const float x1 = D::load(v[i]), x2 = D::load(v[i + half]);
        v[i] = D::store(x1 * c[i] - x2 * s[i]);
        v[i + half] = D::store(x2 * c[i] + x1 * s[i]);
      }
    }
  }
}

template <typename T>
T* ptr(uintptr_t p) {
  if (p == 0) throw std::invalid_argument("layers_cpu: null pointer");
  return reinterpret_cast<T*>(p);
}

void rmsnorm_py(uintptr_t x, int64_t x_stride, uintptr_t res, int64_t res_stride, uintptr_t w,
                uintptr_t out, int64_t out_stride, int64_t rows, int64_t dim, double eps,
                bool bf16) {
  if (rows < 0 || dim <= 0) throw std::invalid_argument("layers_cpu: bad rmsnorm shape");
  if (rows == 0) return;
  py::gil_scoped_release release;
  if (bf16) {
    using T = uint16_t;
    rmsnorm<BF16>(ptr<const T>(x), x_stride, res ? ptr<T>(res) : nullptr, res_stride,
                  ptr<const T>(w), ptr<T>(out), out_stride, rows, dim, static_cast<float>(eps));
  } else {
    rmsnorm<F32>(ptr<const float>(x), x_stride, res ? ptr<float>(res) : nullptr, res_stride,
                 ptr<const float>(w), ptr<float>(out), out_stride, rows, dim,
                 static_cast<float>(eps));
  }
}

void rope_py(uintptr_t x, int64_t stride, int heads, int head_dim, uintptr_t pos, uintptr_t cos,
             uintptr_t sin, int64_t rows, bool bf16) {
  if (rows < 0 || heads <= 0 || head_dim <= 0 || head_dim % 2) {
    throw std::invalid_argument("layers_cpu: bad rope shape");
  }
  if (rows == 0) return;
  py::gil_scoped_release release;
  const int64_t* p = ptr<const int64_t>(pos);
  if (bf16) {
    rotate<BF16>(ptr<uint16_t>(x), stride, heads, head_dim, p, ptr<const float>(cos),
                 ptr<const float>(sin), rows);
  } else {
    rotate<F32>(ptr<float>(x), stride, heads, head_dim, p, ptr<const float>(cos),
                ptr<const float>(sin), rows);
  }
}

}  // namespace

PYBIND11_MODULE(_layers_cpu, m) {
  m.doc() = "Fused RMSNorm (+ residual add) and in-place RoPE on CPU (see csrc/layers_cpu.cpp)";
  m.def("rmsnorm", &rmsnorm_py, py::arg("x"), py::arg("x_stride"), py::arg("res"),
        py::arg("res_stride"), py::arg("weight"), py::arg("out"), py::arg("out_stride"),
        py::arg("rows"), py::arg("dim"), py::arg("eps"), py::arg("bf16"),
        "out = weight * norm(x (+ res)); with res (nonzero), res <- x + res first");
  m.def("rope", &rope_py, py::arg("x"), py::arg("stride"), py::arg("heads"), py::arg("head_dim"),
        py::arg("positions"), py::arg("cos"), py::arg("sin"), py::arg("rows"), py::arg("bf16"),
        "rotate `heads` heads of each of `rows` token rows in place (int64 positions)");
}
