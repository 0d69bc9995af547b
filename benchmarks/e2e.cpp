// End to end against a real PostgreSQL: each thread loops acquire -> SELECT 1
// -> release. Arms, side by side in one run: a dedicated connection per thread
// (the upper bound), pqpool with several validation policies, and
// connect-per-request. The server is the one in $PQPOOL_BENCH_CONNINFO
// (scripts/bench starts a throwaway one).

#include <pqpool/pqpool.hpp>

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <memory>
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

void select1(PGconn* c, benchmark::State& state) {
    PGresult* r = PQexec(c, "SELECT 1");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) state.SkipWithError(PQerrorMessage(c));
    PQclear(r);
}

void dedicated(benchmark::State& state) {
    PGconn* c = PQconnectdb(conninfo().c_str());
    if (PQstatus(c) != CONNECTION_OK) state.SkipWithError(PQerrorMessage(c));
    for (auto _ : state) select1(c, state);
    PQfinish(c);
}

template <class Pool, class Overflow>
void pooled(benchmark::State& state, Overflow overflow) {
    static std::unique_ptr<Pool> pool;
    if (state.thread_index() == 0) {
        pool = std::make_unique<Pool>(conninfo(), overflow);
        if constexpr (!std::is_same_v<Overflow, overflow::pass_through>) {
            std::vector<typename Pool::lease> warm;
            for (int i = 0; i < state.threads(); ++i) warm.push_back(pool->acquire());
        }
    }
    for (auto _ : state) {
        auto lease = pool->acquire();
        select1(lease.get(), state);
    }
    if (state.thread_index() == 0) pool.reset();
}

template <class Validation>
void pqpool_fixed(benchmark::State& state) {
    pooled<pool<Validation, overflow::fixed>>(
        state, overflow::fixed{.size = static_cast<std::size_t>(state.threads()), .wait = 30s});
}

void connect_per_request(benchmark::State& state) {
    pooled<pool<validation::none, overflow::pass_through>>(state, overflow::pass_through{});
}

} // namespace

#define PQPOOL_E2E ->Threads(1)->Threads(2)->UseRealTime()->MeasureProcessCPUTime()
BENCHMARK(dedicated)->Name("e2e/dedicated") PQPOOL_E2E;
BENCHMARK_TEMPLATE(pqpool_fixed, validation::none)->Name("e2e/pqpool/none") PQPOOL_E2E;
BENCHMARK_TEMPLATE(pqpool_fixed, validation::probe)->Name("e2e/pqpool/probe") PQPOOL_E2E;
BENCHMARK_TEMPLATE(pqpool_fixed, validation::ping_if_idle)->Name("e2e/pqpool/ping_if_idle") PQPOOL_E2E;
BENCHMARK_TEMPLATE(pqpool_fixed, validation::ping)->Name("e2e/pqpool/ping") PQPOOL_E2E;
BENCHMARK(connect_per_request)->Name("e2e/connect_per_request") PQPOOL_E2E;

BENCHMARK_MAIN();
