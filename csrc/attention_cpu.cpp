// radixrt._attention_cpu: paged decode / extend attention on CPU, straight from the KV pool.
//
// No torch headers (the package must build in pip's isolated environment with only pybind11
// and gcc): Python passes tensors as data pointers plus strides and has already checked their
// dtypes and layouts; this file re-checks the sizes it can see cheaply.
//
// A step is planned once (Plan: the batch's tokens cut into tasks) and run once per layer.
// A task is (query tokens of one request or of one shared-prefix group, one KV head, a range
// of key positions); its query rows are the tokens x the KV head's group of query heads, so
// each key row is read once for the whole group (GQA). Long contexts are split into several
// tasks (flash-decoding) whose partial results are merged by log-sum-exp afterwards, so the
// cores stay busy even at batch 1. Threads come from OpenMP: with torch imported first, this
// module binds to torch's libgomp and shares its thread pool.

#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace py = pybind11;

namespace radixrt_attn {

constexpr int kMaxHeadDim = 256;

struct KernelArgs {
  const void* q = nullptr;  // [T, Hq, D], q_stride elements between tokens
  int64_t q_stride = 0;
  void* out = nullptr;  // [T, Hq, D], same dtype as q
  int64_t out_stride = 0;
  bool io_bf16 = false;
  const void* k_cache = nullptr;  // [slots, Hkv, D] as strided below
  const void* v_cache = nullptr;
  int64_t kv_slot_stride = 0, kv_head_stride = 0;  // elements; K and V alike
  bool kv_bf16 = false;
  int Hq = 0, Hkv = 0, D = 0, page_size = 0;
  float qscale = 0.0f;  // softmax scale * log2(e)
  const int32_t* page_table = nullptr;
  int64_t pt_stride = 0;
  const int32_t* tok_q = nullptr;    // q row of each listed token
  const int32_t* tok_pos = nullptr;  // its position: it sees keys at positions <= this
  float* partials = nullptr;         // [slot][Hq][D + 2]: m, l, acc
  int small_rows = 0;                // tasks with more query rows put the rows on lanes
};

struct Task {
  int32_t t0, nt;  // listed tokens [t0, t0 + nt)
  int32_t kvh;     // KV head
  int32_t k0, k1;  // key positions [k0, k1)
  int32_t row;     // page-table row the keys are read from
  int32_t part;    // -1: write the output; else first partial slot (one per token)
  int64_t cost;
};

struct KvWrite {
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t k_stride = 0, v_stride = 0;  // elements between tokens
  const int64_t* slots = nullptr;
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  int64_t slot_stride = 0, head_stride = 0;  // elements in the pool
  int Hkv = 0, D = 0;
  bool src_bf16 = false, kv_bf16 = false;
};

// One namespace per instruction set, all from the same source.
// RADIXRT_ATTN_VREGS: the vector registers each variant has (sizes register blocks).
#define RADIXRT_ATTN_SPECIALIZE 1
#define RADIXRT_ATTN_VREGS 32
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")
namespace isa_avx512 {
#include "attention_cpu_kernels.inc"
}  // namespace isa_avx512
#pragma GCC pop_options

#undef RADIXRT_ATTN_VREGS
#define RADIXRT_ATTN_VREGS 16
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace isa_avx2 {
#include "attention_cpu_kernels.inc"
}  // namespace isa_avx2
#pragma GCC pop_options

#undef RADIXRT_ATTN_SPECIALIZE
#define RADIXRT_ATTN_SPECIALIZE 0
#undef RADIXRT_ATTN_VREGS
#define RADIXRT_ATTN_VREGS 8  // 8-float vectors are SSE register pairs
namespace isa_baseline {
#include "attention_cpu_kernels.inc"
}  // namespace isa_baseline

constexpr int BK = isa_baseline::BK;

struct Isa {
  const char* name;
  bool (*supported)();
  void (*run_task)(const KernelArgs&, const Task&, float*);
  void (*merge_token)(const KernelArgs&, int, const int32_t*, int);
  void (*write_kv)(const KvWrite&, int64_t, int64_t);
};

static bool has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("fma");
}
static bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
static bool always() { return true; }

static const Isa kIsas[] = {
    {"avx512", has_avx512, isa_avx512::run_task, isa_avx512::merge_token, isa_avx512::write_kv},
    {"avx2", has_avx2, isa_avx2::run_task, isa_avx2::merge_token, isa_avx2::write_kv},
    {"baseline", always, isa_baseline::run_task, isa_baseline::merge_token,
     isa_baseline::write_kv},
};

static const Isa* g_isa = nullptr;

static const Isa* best_isa() {
  for (const Isa& i : kIsas)
    if (i.supported()) return &i;
  return &kIsas[2];
}

static void set_isa(const std::string& name) {
  if (name == "auto") {
    g_isa = best_isa();
    return;
  }
  for (const Isa& i : kIsas) {
    if (name == i.name) {
      if (!i.supported()) throw std::invalid_argument("this CPU lacks the " + name + " ISA");
      g_isa = &i;
      return;
    }
  }
  throw std::invalid_argument("unknown ISA '" + name + "' (avx512, avx2, baseline or auto)");
}

static std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (const Isa& i : kIsas)
    if (i.supported()) out.emplace_back(i.name);
  return out;
}

using I32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

struct PlanOptions {
  int num_threads = 0;        // <= 0: omp_get_max_threads()
  int cascade_min_pages = 0;  // 0: no shared-prefix grouping
  int cascade_min_rows = 16;  // a group needs this many query rows (requests x group heads)
  int min_chunk = 256;        // fewest keys in a split of one request's context
  int tile_rows = 48;         // query rows per extend task (tokens x group heads), <= 48
  int small_rows = 8;         // up to this many rows: dot products; more: rows on lanes
  int min_parallel_work = 1024;  // query rows x keys below which a step runs on one thread
  // > 0 (--deterministic): a token's arithmetic depends on its own position alone, not on
  // the batch, its prompt's chunking or the thread count. Keys are cut at multiples of this
  // many; every task runs the dot kernel, whose arithmetic for a row is the same whatever
  // rows share the task (a decode is one token, an extend groups up to a tile of tokens
  // that fall between the same two cuts, so they have the same key ranges); no
  // shared-prefix groups.
  int invariant_chunk = 0;
  // The pool's strides in elements, K and V alike (0: token-major, [slots][Hkv][D]). A
  // head-major pool ([Hkv][slots][D]) keeps each head's keys of a page, and of consecutive
  // pages, contiguous: decode streams them from DRAM instead of reading 1 row in Hkv.
  int64_t kv_slot_stride = 0;
  int64_t kv_head_stride = 0;
};

class Plan {
 public:
  Plan(I32Array page_table, I32Array cu_new, I32Array start_pos, I64Array out_slots,
       int num_heads, int num_kv_heads, int head_dim, int page_size, int64_t num_pool_pages,
       bool io_bf16, bool kv_bf16, float scale, PlanOptions opt)
      : page_table_(std::move(page_table)), out_slots_(std::move(out_slots)), opt_(opt) {
    if (num_kv_heads <= 0 || num_heads % num_kv_heads != 0)
      throw std::invalid_argument("num_heads must be a multiple of num_kv_heads");
    if (head_dim <= 0 || head_dim % 16 != 0 || head_dim > kMaxHeadDim)
      throw std::invalid_argument("head_dim must be a multiple of 16, at most 256");
    if (page_size <= 0) throw std::invalid_argument("page_size must be positive");
    if (opt.invariant_chunk < 0 || opt.invariant_chunk % BK != 0)
      throw std::invalid_argument("invariant_chunk must be 0 or a multiple of 16");
    if (cu_new.ndim() != 1 || start_pos.ndim() != 1 || page_table_.ndim() != 2)
      throw std::invalid_argument("cu_new, start_pos: 1-D; page_table: 2-D");
    const int64_t B = start_pos.shape(0);
    if (cu_new.shape(0) != B + 1 || page_table_.shape(0) != B)
      throw std::invalid_argument("cu_new must have B + 1 entries and page_table B rows");
    const int32_t* cu = cu_new.data();
    const int32_t* start = start_pos.data();
    const int64_t width = page_table_.shape(1);
    const int32_t* pt = page_table_.data();
    if (cu[0] != 0) throw std::invalid_argument("cu_new[0] must be 0");
    for (int64_t b = 0; b < B; ++b) {
      if (cu[b + 1] < cu[b] || start[b] < 0)
        throw std::invalid_argument("cu_new must be non-decreasing and start_pos >= 0");
      const int64_t seq = static_cast<int64_t>(start[b]) + cu[b + 1] - cu[b];
      const int64_t need = (seq + page_size - 1) / page_size;
      if (need > width) throw std::invalid_argument("page_table is narrower than a sequence");
      for (int64_t p = 0; p < need; ++p) {
        const int32_t page = pt[b * width + p];
        if (page < 0 || page > num_pool_pages)
          throw std::invalid_argument("page id outside the KV pool");
      }
    }
    T_ = cu[B];
    if (out_slots_.ndim() != 1 || out_slots_.shape(0) != T_)
      throw std::invalid_argument("out_slots must have one entry per new token");
    const int64_t num_slots = (num_pool_pages + 1) * page_size;
    for (int64_t t = 0; t < T_; ++t)
      if (out_slots_.data()[t] < 0 || out_slots_.data()[t] >= num_slots)
        throw std::invalid_argument("out_slot outside the KV pool");

    a_.io_bf16 = io_bf16;
    a_.kv_bf16 = kv_bf16;
    a_.Hq = num_heads;
    a_.Hkv = num_kv_heads;
    a_.D = head_dim;
    a_.page_size = page_size;
    a_.qscale = scale * 1.4426950408889634f;
    a_.page_table = pt;
    a_.pt_stride = width;
    a_.kv_slot_stride = opt.kv_slot_stride ? opt.kv_slot_stride
                                           : static_cast<int64_t>(num_kv_heads) * head_dim;
    a_.kv_head_stride = opt.kv_head_stride ? opt.kv_head_stride : head_dim;
    {
      // Both layouts (and no overlap between rows): [slots][Hkv][D] or [Hkv][slots][D].
      const int64_t ss = a_.kv_slot_stride, hs = a_.kv_head_stride, D = head_dim;
      const bool token_major = hs == D && ss == num_kv_heads * D;
      const bool head_major = ss == D && hs == num_slots * D;
      if (!token_major && !head_major)
        throw std::invalid_argument("KV pool strides are neither [slots][heads][dim] nor "
                                    "[heads][slots][dim]");
    }
    // The invariant plan runs every task on the dot kernel (see PlanOptions).
    a_.small_rows = opt.invariant_chunk > 0 ? std::numeric_limits<int>::max() : opt.small_rows;
    nthreads_ = opt.num_threads > 0 ? opt.num_threads : omp_get_max_threads();
    build(B, cu, start);
    a_.tok_q = tok_q_.data();
    a_.tok_pos = tok_pos_.data();
    a_.partials = partials_.data();
  }

  // Writes the step's new k/v into the pool, then attention for every new token into out.
  void run(int64_t q, int64_t q_stride, int64_t k, int64_t k_stride, int64_t v, int64_t v_stride,
           int64_t out, int64_t num_tokens, int64_t k_cache, int64_t v_cache) {
    if (num_tokens != T_) throw std::invalid_argument("q has a different token count than planned");
    if (!q || !k || !v || !out || !k_cache || !v_cache)
      throw std::invalid_argument("null tensor pointer");
    const int64_t row = static_cast<int64_t>(a_.Hkv) * a_.D;
    if (q_stride < static_cast<int64_t>(a_.Hq) * a_.D || k_stride < row || v_stride < row)
      throw std::invalid_argument("token stride smaller than a token's heads");
    KernelArgs a = a_;
    a.q = reinterpret_cast<const void*>(q);
    a.q_stride = q_stride;
    a.out = reinterpret_cast<void*>(out);
    a.out_stride = static_cast<int64_t>(a_.Hq) * a_.D;
    a.k_cache = reinterpret_cast<const void*>(k_cache);
    a.v_cache = reinterpret_cast<const void*>(v_cache);
    KvWrite w;
    w.k = reinterpret_cast<const void*>(k);
    w.v = reinterpret_cast<const void*>(v);
    w.k_stride = k_stride;
    w.v_stride = v_stride;
    w.slots = out_slots_.data();
    w.k_cache = reinterpret_cast<void*>(k_cache);
    w.v_cache = reinterpret_cast<void*>(v_cache);
    w.slot_stride = a_.kv_slot_stride;
    w.head_stride = a_.kv_head_stride;
    w.Hkv = a_.Hkv;
    w.D = a_.D;
    w.src_bf16 = a_.io_bf16;
    w.kv_bf16 = a_.kv_bf16;
    const Isa* isa = g_isa;
    const int64_t ntasks = static_cast<int64_t>(tasks_.size());
    const int64_t nmerge = static_cast<int64_t>(merge_q_.size());
    constexpr int64_t kWriteChunk = 64;
    py::gil_scoped_release nogil;
#pragma omp parallel num_threads(nthreads_) if (nthreads_ > 1)
    {
      float* scratch = scratch_.data() + omp_get_thread_num() * scratch_stride_;
#pragma omp for schedule(static)
      for (int64_t t = 0; t < T_; t += kWriteChunk)
        isa->write_kv(w, t, std::min(T_, t + kWriteChunk));
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < ntasks; ++i) isa->run_task(a, tasks_[i], scratch);
#pragma omp for schedule(static)
      for (int64_t i = 0; i < nmerge; ++i)
        isa->merge_token(a, merge_q_[i], merge_slots_.data() + merge_off_[i],
                         merge_off_[i + 1] - merge_off_[i]);
    }
  }

  py::list tasks() const {
    py::list out;
    for (const Task& t : tasks_) {
      py::list toks;
      for (int i = t.t0; i < t.t0 + t.nt; ++i) toks.append(tok_q_[i]);
      out.append(py::make_tuple(toks, t.kvh, t.k0, t.k1, t.row, t.part));
    }
    return out;
  }
  std::vector<std::pair<std::vector<int32_t>, int32_t>> groups() const { return groups_; }
  int64_t num_partial_slots() const { return num_slots_; }
  int num_threads() const { return nthreads_; }

 private:
  // Adds one split unit's tasks (one per KV head); tokens [t0, t0 + nt) of the token list.
  void add_unit(int t0, int nt, int k0, int k1, int row, int part, int64_t cost) {
    for (int h = 0; h < a_.Hkv; ++h) tasks_.push_back({t0, nt, h, k0, k1, row, part, cost});
  }

  // Keys [0, k1) cut at multiples of `chunk` (a multiple of BK): the same cuts for a token
  // whatever else the step holds.
  static std::vector<std::pair<int, int>> aligned_splits(int k1, int64_t chunk) {
    std::vector<std::pair<int, int>> out;
    for (int64_t s = 0; s < k1; s += chunk)
      out.emplace_back(static_cast<int>(s), static_cast<int>(std::min<int64_t>(k1, s + chunk)));
    return out;
  }

  // Key ranges of [k0, k1) for rows query rows, each at most `chunk` keys (a multiple of BK).
  static std::vector<std::pair<int, int>> splits(int k0, int k1, int64_t chunk) {
    std::vector<std::pair<int, int>> out;
    const int64_t n = std::max<int64_t>(1, (k1 - k0 + chunk - 1) / chunk);
    int64_t len = (k1 - k0 + n - 1) / n;
    len = (len + BK - 1) / BK * BK;
    for (int64_t s = k0; s < k1; s += len) out.emplace_back(s, std::min<int64_t>(k1, s + len));
    if (out.empty()) out.emplace_back(k0, k1);
    return out;
  }

  void build(int64_t B, const int32_t* cu, const int32_t* start) {
    const int G = a_.Hq / a_.Hkv, ps = a_.page_size;
    const int32_t* pt = a_.page_table;
    const int64_t width = a_.pt_stride;
    for (int64_t b = 0; b < B; ++b)
      for (int i = cu[b]; i < cu[b + 1]; ++i) {
        tok_q_.push_back(i);
        tok_pos_.push_back(start[b] + (i - cu[b]));
      }
    // Shared-prefix groups among decode rows: same first page, then as many equal leading
    // pages as every member has fully written (each keeps at least its last token outside).
    std::vector<int32_t> shared(B, 0);
    if (opt_.cascade_min_pages > 0 && opt_.invariant_chunk <= 0) {
      std::map<int32_t, std::vector<int32_t>> by_first;
      for (int64_t b = 0; b < B; ++b)
        if (cu[b + 1] - cu[b] == 1) by_first[pt[b * width]].push_back(static_cast<int32_t>(b));
      for (auto& [page, rows] : by_first) {
        if (rows.size() < 2) continue;
        int64_t common = width;
        for (int32_t b : rows) common = std::min<int64_t>(common, start[b] / ps);
        for (int64_t p = 0; p < common; ++p)
          for (int32_t b : rows)
            if (pt[b * width + p] != pt[rows[0] * width + p]) {
              common = p;
              break;
            }
        if (common >= opt_.cascade_min_pages &&
            static_cast<int>(rows.size()) * G >= opt_.cascade_min_rows) {
          for (int32_t b : rows) shared[b] = static_cast<int32_t>(common);
          groups_.emplace_back(rows, static_cast<int32_t>(common));
        }
      }
    }
    // Work estimate (query rows x keys) -> the longest key range one task may take.
    double total = 0;
    for (int64_t b = 0; b < B; ++b) {
      const double n = cu[b + 1] - cu[b];
      total += G * (n * start[b] + n * (n + 1) / 2 - static_cast<double>(shared[b]) * ps);
    }
    for (auto& g : groups_) total += static_cast<double>(G) * g.first.size() * g.second * ps;
    // Too little work to pay for waking the other threads (a few microseconds): run serial.
    if (total * a_.Hkv < opt_.min_parallel_work) nthreads_ = 1;
    const double target = nthreads_ > 1 ? total / (4.0 * nthreads_) : 1e300;
    auto chunk_for = [&](int rows) {
      const double c = std::max<double>(opt_.min_chunk, target / rows);
      return static_cast<int64_t>(std::min(c, 1e9));
    };
    std::vector<std::vector<int32_t>> tok_slots(T_);  // partial slots of each token
    // One split unit per key range in sp; its tokens need partial slots unless it is their
    // only unit (alone and unsplit).
    auto unit = [&](int t0, int nt, int row, bool alone, int rows,
                    const std::vector<std::pair<int, int>>& sp) {
      const bool partial = !alone || sp.size() > 1;
      for (auto [s0, s1] : sp) {
        int part = -1;
        if (partial) {
          part = static_cast<int>(num_slots_);
          for (int i = 0; i < nt; ++i) tok_slots[tok_q_[t0 + i]].push_back(part + i);
          num_slots_ += nt;
        }
        add_unit(t0, nt, s0, s1, row, part, static_cast<int64_t>(rows) * (s1 - s0));
      }
    };
    const int bq = std::max(1, std::min(opt_.tile_rows, isa_baseline::kTileRows) / G);
    for (int64_t b = 0; b < B; ++b) {
      const int n = cu[b + 1] - cu[b];
      if (opt_.invariant_chunk > 0) {
        const int64_t c = opt_.invariant_chunk;
        for (int i0 = 0; i0 < n;) {
          const int64_t p0 = start[b] + i0, next_cut = (p0 / c + 1) * c;
          const int nt = static_cast<int>(std::min<int64_t>({bq, n - i0, next_cut - p0}));
          unit(cu[b] + i0, nt, static_cast<int>(b), true, nt * G,
               aligned_splits(static_cast<int>(p0) + nt, c));
          i0 += nt;
        }
      } else if (n == 1) {
        const int k0 = shared[b] * ps, k1 = start[b] + 1;
        unit(cu[b], 1, static_cast<int>(b), shared[b] == 0, G, splits(k0, k1, chunk_for(G)));
      } else {
        for (int i0 = 0; i0 < n; i0 += bq) {
          const int nt = std::min(bq, n - i0), k1 = start[b] + i0 + nt;
          unit(cu[b] + i0, nt, static_cast<int>(b), true, nt * G, splits(0, k1, chunk_for(nt * G)));
        }
      }
    }
    for (auto& [rows, common] : groups_) {
      for (size_t i0 = 0; i0 < rows.size(); i0 += bq) {
        const int nt = static_cast<int>(std::min<size_t>(bq, rows.size() - i0));
        const int t0 = static_cast<int>(tok_q_.size());
        for (int i = 0; i < nt; ++i) {
          const int32_t b = rows[i0 + i];
          tok_q_.push_back(cu[b]);
          tok_pos_.push_back(start[b]);
        }
        unit(t0, nt, rows[0], false, nt * G, splits(0, common * ps, chunk_for(nt * G)));
      }
    }
    // Longest tasks first: dynamic scheduling then balances the tail.
    std::stable_sort(tasks_.begin(), tasks_.end(),
                     [](const Task& x, const Task& y) { return x.cost > y.cost; });
    merge_off_.push_back(0);
    for (int64_t t = 0; t < T_; ++t) {
      if (tok_slots[t].empty()) continue;
      merge_q_.push_back(static_cast<int32_t>(t));
      merge_slots_.insert(merge_slots_.end(), tok_slots[t].begin(), tok_slots[t].end());
      merge_off_.push_back(static_cast<int32_t>(merge_slots_.size()));
    }
    partials_.assign(std::max<int64_t>(1, num_slots_ * a_.Hq * (a_.D + 2)), 0.0f);
    int max_rows = 1;
    for (const Task& t : tasks_) max_rows = std::max(max_rows, t.nt * G);
    scratch_stride_ = (isa_baseline::scratch_floats(max_rows, a_.D) + 15) / 16 * 16;
    scratch_.assign(scratch_stride_ * nthreads_, 0.0f);
  }

  I32Array page_table_;
  I64Array out_slots_;
  PlanOptions opt_;
  KernelArgs a_;
  int nthreads_ = 1;
  int64_t T_ = 0;
  std::vector<int32_t> tok_q_, tok_pos_;
  std::vector<Task> tasks_;
  std::vector<std::pair<std::vector<int32_t>, int32_t>> groups_;
  int64_t num_slots_ = 0;
  std::vector<int32_t> merge_q_, merge_off_, merge_slots_;
  std::vector<float> partials_;
  std::vector<float> scratch_;
  int64_t scratch_stride_ = 0;
};

}  // namespace radixrt_attn

PYBIND11_MODULE(_attention_cpu, m) {
  using namespace radixrt_attn;
  m.doc() = "Paged decode/extend attention on CPU straight from the KV pool (see csrc/).";
  const char* env = std::getenv("RADIXRT_ATTENTION_ISA");
  set_isa(env && *env ? env : "auto");
  m.def("isa", [] { return std::string(g_isa->name); }, "instruction set in use");
  m.def("available_isas", &available_isas, "instruction sets this CPU runs, best first");
  m.def("set_isa", &set_isa, py::arg("name"),
        "use one instruction set (avx512, avx2, baseline) or `auto`, e.g. to test each");
  m.def("omp_max_threads", [] { return omp_get_max_threads(); });
  py::class_<PlanOptions>(m, "PlanOptions")
      .def(py::init<>())
      .def_readwrite("num_threads", &PlanOptions::num_threads)
      .def_readwrite("cascade_min_pages", &PlanOptions::cascade_min_pages)
      .def_readwrite("cascade_min_rows", &PlanOptions::cascade_min_rows)
      .def_readwrite("min_chunk", &PlanOptions::min_chunk)
      .def_readwrite("tile_rows", &PlanOptions::tile_rows)
      .def_readwrite("small_rows", &PlanOptions::small_rows)
      .def_readwrite("min_parallel_work", &PlanOptions::min_parallel_work)
      .def_readwrite("invariant_chunk", &PlanOptions::invariant_chunk)
      .def_readwrite("kv_slot_stride", &PlanOptions::kv_slot_stride)
      .def_readwrite("kv_head_stride", &PlanOptions::kv_head_stride);
  py::class_<Plan>(m, "Plan")
      .def(py::init<I32Array, I32Array, I32Array, I64Array, int, int, int, int, int64_t, bool,
                    bool, float, PlanOptions>(),
           py::arg("page_table"), py::arg("cu_new"), py::arg("start_pos"), py::arg("out_slots"),
           py::arg("num_heads"), py::arg("num_kv_heads"), py::arg("head_dim"),
           py::arg("page_size"), py::arg("num_pool_pages"), py::arg("io_bf16"),
           py::arg("kv_bf16"), py::arg("scale"), py::arg("options"))
      .def("run", &Plan::run, py::arg("q"), py::arg("q_stride"), py::arg("k"),
           py::arg("k_stride"), py::arg("v"), py::arg("v_stride"), py::arg("out"),
           py::arg("num_tokens"), py::arg("k_cache"), py::arg("v_cache"))
      .def("tasks", &Plan::tasks, "(q rows, kv head, k0, k1, page-table row, partial slot)")
      .def("groups", &Plan::groups, "shared-prefix groups: (batch rows, shared pages)")
      .def_property_readonly("num_partial_slots", &Plan::num_partial_slots)
      .def_property_readonly("num_threads", &Plan::num_threads);
}
