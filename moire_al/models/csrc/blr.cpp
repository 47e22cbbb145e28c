// Compensated (double-double) accumulation of the normal equations' blocks.
//
// two_sum_add(hi, lo, x, n): for every k, (s, e) = TwoSum(hi[k], x[k]) (Knuth: s = fl(a + b),
// a + b = s + e exactly), hi[k] = s, lo[k] += e. The same IEEE operations in the same order as
// NormalEquations' numpy fallback, so the results are bitwise equal; built without
// -ffast-math and with -ffp-contract=off (no fused operations may change a rounding).
// One pass over the three arrays (numpy's five temporaries made this 2.5 s per 5.5k x 5.5k
// block, half of the seed-sized fit's time: docs/benchmarks.md). Threads split [0, n).
#include <cstddef>
#include <thread>
#include <vector>

static void two_sum_range(double* hi, double* lo, const double* x, std::size_t a, std::size_t b) {
    for (std::size_t k = a; k < b; ++k) {
        const double s = hi[k] + x[k];
        const double bp = s - hi[k];
        const double e = (hi[k] - (s - bp)) + (x[k] - bp);
        hi[k] = s;
        lo[k] += e;
    }
}

extern "C" {

void two_sum_add(double* hi, double* lo, const double* x, long n, int threads) {
    const std::size_t N = static_cast<std::size_t>(n);
    if (threads <= 1 || N < (1u << 16)) {
        two_sum_range(hi, lo, x, 0, N);
        return;
    }
    std::vector<std::thread> pool;
    const std::size_t step = (N + threads - 1) / threads;
    for (int t = 0; t < threads; ++t) {
        const std::size_t a = t * step, b = a + step < N ? a + step : N;
        if (a < b) pool.emplace_back(two_sum_range, hi, lo, x, a, b);
    }
    for (auto& th : pool) th.join();
}

}  // extern "C"
