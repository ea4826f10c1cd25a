// OpenMP helpers shared by radixrt's CPU matmul extensions (quant_cpu.cpp, dense_cpu.cpp).
// Built with -fopenmp and imported after torch, they run on torch's libgomp thread pool.

#pragma once

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace radixrt {

// OpenMP threads for a call: `requested`, or all of the pool when it is 0.
inline int threads(int requested) {
#ifdef _OPENMP
    return requested > 0 ? requested : omp_get_max_threads();
#else
    (void)requested;
    return 1;
#endif
}

// Splits rows [0, N) into contiguous ranges, one per thread (static: each thread streams
// one contiguous slice of the weights), in multiples of `align` rows.
template <typename F>
inline void parallel_rows(int64_t N, int nthreads, F body, int64_t align = 8) {
    const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads(nthreads), N)));
    if (nt == 1) {
        body(0, N);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
#else
        const int t = 0, T = 1;
#endif
        // Rows in multiples of 8 (by default) so that threads never share a cache line of
        // y's row.
        const int64_t per = ((N + T - 1) / T + align - 1) / align * align;
        const int64_t a = std::min<int64_t>(N, t * per), b = std::min<int64_t>(N, a + per);
        if (a < b) body(a, b);
    }
}

}  // namespace radixrt
