// The acquire+release cycle without a network: pqpool's policy combinations
// against a hand-written mutex + condition variable + vector pool, side by side
// in one run. Pool size = threads (uncontended) unless the name says otherwise.

#include "baseline_pool.hpp"
#include "bench_connector.hpp"

#include <pqpool/basic_pool.hpp>

#include <benchmark/benchmark.h>

#include <memory>

using namespace pqpool;
using namespace std::chrono_literals;

namespace {

template <class... Options>
using bench_pool = typename detail::select<bench::null_connector, Options...>::type;

using null_mutex_pool =
    bench_pool<validation::none, recycling::none, overflow::fixed, retry::none, fork_safety::none>;
using null_single_pool = bench_pool<validation::none, recycling::none, overflow::fixed, retry::none,
                                    fork_safety::none, concurrency::single_thread>;
using fork_detect_pool =
    bench_pool<validation::none, recycling::none, overflow::fixed, retry::none, fork_safety::detect>;
using probe_pool = bench_pool<validation::probe, recycling::none, overflow::fixed, retry::none, fork_safety::none>;
// The production combination (pool<>'s defaults) with a free connector: ping_if_idle's
// probe and clock read, lifetime with jitter and reset on return, backoff, fork detection.
using production_pool = bench_pool<overflow::fixed>;

void handwritten(benchmark::State& state) {
    static std::unique_ptr<bench::handwritten_pool<bench::null_connection*>> pool;
    if (state.thread_index() == 0)
        pool = std::make_unique<bench::handwritten_pool<bench::null_connection*>>(
            static_cast<std::size_t>(state.threads()), [] { return new bench::null_connection{}; });
    for (auto _ : state) {
        auto* h = pool->acquire();
        benchmark::DoNotOptimize(h);
        pool->release(h);
    }
    if (state.thread_index() == 0) {
        for (auto* h : pool->handles()) delete h;
        pool.reset();
    }
}

template <class Pool>
void pqpool_cycle(benchmark::State& state) {
    static std::unique_ptr<Pool> pool;
    if (state.thread_index() == 0) {
        pool = std::make_unique<Pool>(bench::null_connector{},
                                      overflow::fixed{.size = static_cast<std::size_t>(state.threads()), .wait = 30s});
        std::vector<typename Pool::lease> warm; // open every connection before timing
        for (int i = 0; i < state.threads(); ++i) warm.push_back(pool->acquire());
    }
    for (auto _ : state) {
        auto lease = pool->acquire();
        benchmark::DoNotOptimize(lease.get());
    }
    if (state.thread_index() == 0) pool.reset();
}

} // namespace

// Google Benchmark's threads start together and share the static pool; thread 0
// sets it up before the timed loop of any thread begins.
#define PQPOOL_THREADS ->Threads(1)->Threads(2)->Threads(4)->Threads(8)->UseRealTime()
BENCHMARK(handwritten) PQPOOL_THREADS;
BENCHMARK_TEMPLATE(pqpool_cycle, null_mutex_pool)->Name("pqpool/null") PQPOOL_THREADS;
BENCHMARK_TEMPLATE(pqpool_cycle, fork_detect_pool)->Name("pqpool/null+fork_detect") PQPOOL_THREADS;
BENCHMARK_TEMPLATE(pqpool_cycle, probe_pool)->Name("pqpool/null+probe") PQPOOL_THREADS;
BENCHMARK_TEMPLATE(pqpool_cycle, production_pool)->Name("pqpool/production") PQPOOL_THREADS;
BENCHMARK_TEMPLATE(pqpool_cycle, null_single_pool)->Name("pqpool/null+single_thread")->Threads(1)->UseRealTime();

BENCHMARK_MAIN();
