// Compensated (double-double) accumulation of the normal equations' blocks.
//
// two_sum_add(hi, lo, x, n): for every k, (s, e) = TwoSum(hi[k], x[k]) (Knuth: s = fl(a + b),
// a + b = s + e exactly), hi[k] = s, lo[k] += e. The same IEEE operations in the same order as
// NormalEquations' numpy fallback, so the results are bitwise equal; built without
// -ffast-math and with -ffp-contract=off (no fused operations may change a rounding).
// One pass over the three arrays (numpy's five temporaries made this 2.5 s per 5.5k x 5.5k
// block, half of the seed-sized fit's time: docs/benchmarks.md). Threads split [0, n).
#include <cmath>
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

// The same on the upper triangle (diagonal included) of n x n Fortran-ordered arrays: column
// j's rows [0, j]. The strictly lower triangle is left as it is, which is what the full pass
// does where x is zero there (TwoSum(h, 0) = (h, 0)), as in syrk_upper's products: half the
// memory traffic of a pass that is memory-bound. Threads split the columns at equal areas.
void two_sum_add_upper(double* hi, double* lo, const double* x, long n, int threads) {
    const std::size_t N = static_cast<std::size_t>(n);
    auto cols = [&](std::size_t j0, std::size_t j1) {
        for (std::size_t j = j0; j < j1; ++j) two_sum_range(hi + j * N, lo + j * N, x + j * N, 0, j + 1);
    };
    if (threads <= 1 || N * N < (1u << 17)) {
        cols(0, N);
        return;
    }
    std::vector<std::thread> pool;
    std::size_t j0 = 0;
    for (int t = 1; t <= threads; ++t) {
        // columns [0, j) hold j (j + 1) / 2 entries: thread t ends where t / threads of them lie
        std::size_t j1 = t == threads ? N : static_cast<std::size_t>(std::sqrt(static_cast<double>(t) / threads) * N);
        if (j1 > N) j1 = N;
        if (j0 < j1) pool.emplace_back(cols, j0, j1);
        j0 = j1 > j0 ? j1 : j0;
    }
    for (auto& th : pool) th.join();
}

}  // extern "C"
