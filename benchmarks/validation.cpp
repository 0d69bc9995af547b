// What each validation policy costs per checkout, against a real PostgreSQL:
// one thread loops acquire -> release of one warm, idle connection (a pool of
// one), with no query, so the time is the pool's own work plus what the policy
// adds: nothing (none), one poll() (probe), a clock read and a poll()
// (ping_if_idle: the loop never idles for its 1 s window), or a round trip
// (ping). The server is the one in $PQPOOL_BENCH_CONNINFO (scripts/bench
// starts a throwaway one, TLS on).
//
// The other categories are those of the microbenchmarks' null pool
// (recycling::none, retry::none, fork_safety::none, the mutex), so the arms
// differ only in validation; the baseline is validation/none.

#include <pqpool/pqpool.hpp>

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

using namespace pqpool;
using namespace std::chrono_literals;

namespace {

std::string conninfo() {
    const char* c = std::getenv("PQPOOL_BENCH_CONNINFO");
    if (!c || !*c) throw std::runtime_error("set PQPOOL_BENCH_CONNINFO (scripts/bench does)");
    return c;
}

template <class Validation>
void checkout(benchmark::State& state, Validation validation) {
    using pool_type =
        pool<Validation, recycling::none, overflow::fixed, retry::none, fork_safety::none, concurrency::mutex>;
    pool_type p{conninfo(), overflow::fixed{.size = 1, .wait = 5s}, validation};
    int backend = 0;
    {
        auto warm = p.acquire(); // opened before timing
        backend = PQbackendPID(warm.get());
    }
    for (auto _ : state) {
        auto lease = p.acquire();
        benchmark::DoNotOptimize(lease.get());
    }
    // A failed validation would have replaced the connection and timed a connect.
    if (PQbackendPID(p.acquire().get()) != backend)
        state.SkipWithError("the connection was replaced during the run: a validation failed");
}

} // namespace

#define PQPOOL_VALIDATION ->UseRealTime()
BENCHMARK_CAPTURE(checkout, none, validation::none{})->Name("validation/none") PQPOOL_VALIDATION;
BENCHMARK_CAPTURE(checkout, probe, validation::probe{})->Name("validation/probe") PQPOOL_VALIDATION;
BENCHMARK_CAPTURE(checkout, ping_if_idle, validation::ping_if_idle{.idle_for = 1s})
    ->Name("validation/ping_if_idle") PQPOOL_VALIDATION;
BENCHMARK_CAPTURE(checkout, ping, validation::ping{})->Name("validation/ping") PQPOOL_VALIDATION;

BENCHMARK_MAIN();
