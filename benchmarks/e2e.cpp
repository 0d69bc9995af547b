// End to end against a real PostgreSQL: each thread loops acquire -> SELECT 1
// -> release. Arms, side by side in one run, grouped by how the client reaches
// the server (e2e/GROUP/ARM; each group's dedicated arm is its upper bound):
//
//   tls        TCP with TLS ($PQPOOL_BENCH_CONNINFO_TLS, or $PQPOOL_BENCH_CONNINFO)
//   tcp        TCP without TLS ($PQPOOL_BENCH_CONNINFO_TCP)
//   unix       the Unix socket ($PQPOOL_BENCH_CONNINFO_UNIX)
//   pgbouncer  PgBouncer in transaction mode ($PQPOOL_BENCH_CONNINFO_PGBOUNCER)
//
// A group whose variable is unset is left out (scripts/bench sets them all).
// Arms: a dedicated connection per thread (the upper bound); pqpool with the
// production policies (pool<>'s defaults) with size = threads and size =
// threads / 2; pqpool with validation none, probe, ping_if_idle and ping
// (ping: SQLAlchemy's pool_pre_ping); connect per request (a pass-through
// pool: what a pool-less program pays); through PgBouncer, the pass-through
// pool; SOCI's connection_pool when built with it. Counter p99_us: the 99th
// percentile of one acquire -> SELECT 1 -> release, over all threads.

#include <pqpool/pqpool.hpp>

#include <benchmark/benchmark.h>

#ifdef PQPOOL_BENCH_HAVE_SOCI
#include <soci/connection-pool.h>
#include <soci/postgresql/soci-postgresql.h>
#include <soci/soci.h>
#endif

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

using namespace pqpool;
using namespace std::chrono_literals;

namespace {

std::string env(const char* name) {
    const char* c = std::getenv(name);
    return c ? c : "";
}

// One latency vector per thread, each written only by its thread, merged by
// thread 0 after the loop's closing barrier.
constexpr int max_threads = 64;
std::array<std::vector<std::uint32_t>, max_threads> latencies;

// Runs the loop, timing each operation; thread 0 reports the merged p99.
template <class Op>
void timed_loop(benchmark::State& state, Op op) {
    auto& mine = latencies[static_cast<std::size_t>(state.thread_index())];
    mine.clear();
    mine.reserve(static_cast<std::size_t>(state.max_iterations));
    for (auto _ : state) {
        const auto t0 = std::chrono::steady_clock::now();
        op();
        mine.push_back(static_cast<std::uint32_t>(std::min<std::int64_t>((std::chrono::steady_clock::now() - t0) / 1ns,
                                                                         std::numeric_limits<std::uint32_t>::max())));
    }
    if (state.thread_index() == 0) {
        std::vector<std::uint32_t> all;
        for (int i = 0; i < state.threads(); ++i)
            all.insert(all.end(), latencies[static_cast<std::size_t>(i)].begin(),
                       latencies[static_cast<std::size_t>(i)].end());
        if (!all.empty()) {
            auto k = all.begin() + static_cast<std::ptrdiff_t>(0.99 * static_cast<double>(all.size() - 1));
            std::nth_element(all.begin(), k, all.end());
            state.counters["p99_us"] = static_cast<double>(*k) / 1e3;
        }
    }
}

void select1(PGconn* c, benchmark::State& state) {
    PGresult* r = PQexec(c, "SELECT 1");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) state.SkipWithError(PQerrorMessage(c));
    PQclear(r);
}

void dedicated(benchmark::State& state, const std::string& conninfo) {
    PGconn* c = PQconnectdb(conninfo.c_str());
    if (PQstatus(c) != CONNECTION_OK) state.SkipWithError(PQerrorMessage(c));
    timed_loop(state, [&] { select1(c, state); });
    PQfinish(c);
}

// Google Benchmark's threads share the static pool; thread 0 opens it before
// the loop's opening barrier and closes it after the closing one.
template <class Pool, class MakePolicy>
void pooled(benchmark::State& state, const std::string& conninfo, MakePolicy make_policy) {
    static std::unique_ptr<Pool> pool;
    if (state.thread_index() == 0) {
        const auto overflow = make_policy(static_cast<std::size_t>(state.threads()));
        pool = std::make_unique<Pool>(conninfo, overflow);
        if constexpr (!std::is_same_v<decltype(overflow), const overflow::pass_through>) {
            std::vector<typename Pool::lease> warm; // open every connection before timing
            for (std::size_t i = 0; i < overflow.size; ++i) warm.push_back(pool->acquire());
        }
    }
    timed_loop(state, [&] {
        auto lease = pool->acquire();
        select1(lease.get(), state);
    });
    if (state.thread_index() == 0) pool.reset();
}

// The production policies: pool<>'s defaults, with `size` kept and no overflow.
auto production_size(bool half) {
    return [half](std::size_t threads) {
        return overflow::bounded{.size = half ? std::max<std::size_t>(1, threads / 2) : threads, .max_overflow = 0};
    };
}

template <class Validation>
void validated(benchmark::State& state, const std::string& conninfo) {
    pooled<pool<Validation, overflow::fixed>>(
        state, conninfo, [](std::size_t threads) { return overflow::fixed{.size = threads, .wait = 30s}; });
}

void pass_through(benchmark::State& state, const std::string& conninfo) {
    pooled<pool<validation::none, overflow::pass_through>>(state, conninfo,
                                                           [](std::size_t) { return overflow::pass_through{}; });
}

#ifdef PQPOOL_BENCH_HAVE_SOCI
// SOCI 4.0's connection_pool: sessions opened up front, a soci::session
// borrowed per operation (the pool's lease), SELECT 1, returned on scope exit.
void soci_pool(benchmark::State& state, const std::string& conninfo) {
    static std::unique_ptr<soci::connection_pool> pool;
    if (state.thread_index() == 0) {
        const auto n = static_cast<std::size_t>(state.threads());
        pool = std::make_unique<soci::connection_pool>(n);
        for (std::size_t i = 0; i < n; ++i) pool->at(i).open(*soci::factory_postgresql(), conninfo);
    }
    timed_loop(state, [&] {
        soci::session sql(*pool);
        sql << "SELECT 1";
    });
    if (state.thread_index() == 0) pool.reset();
}
#endif

void add(const std::string& name, std::function<void(benchmark::State&)> f) {
    benchmark::RegisterBenchmark(name.c_str(), std::move(f))
        ->Threads(1)
        ->Threads(2)
        ->Threads(4)
        ->UseRealTime()
        ->MeasureProcessCPUTime();
}

} // namespace

int main(int argc, char** argv) {
    std::string tls = env("PQPOOL_BENCH_CONNINFO_TLS");
    if (tls.empty()) tls = env("PQPOOL_BENCH_CONNINFO");
    const std::string tcp = env("PQPOOL_BENCH_CONNINFO_TCP");
    const std::string unix_socket = env("PQPOOL_BENCH_CONNINFO_UNIX");
    const std::string pgbouncer = env("PQPOOL_BENCH_CONNINFO_PGBOUNCER");

    auto bind = [](auto f, std::string c) { return [f, c](benchmark::State& s) { f(s, c); }; };
    using production = pool<>;

    for (const auto& [group, conninfo] :
         {std::pair{"tls", tls}, std::pair{"tcp", tcp}, std::pair{"unix", unix_socket}}) {
        if (conninfo.empty()) continue;
        const std::string c = conninfo; // a lambda may not capture a structured binding in C++20
        const std::string g = std::string("e2e/") + group + "/";
        add(g + "dedicated", bind(dedicated, c));
        add(g + "pqpool/production", [c](benchmark::State& s) { pooled<production>(s, c, production_size(false)); });
        add(g + "pqpool/production,size=threads/2",
            [c](benchmark::State& s) { pooled<production>(s, c, production_size(true)); });
        if (std::string(group) == "tls") {
            add(g + "pqpool/none", bind(validated<validation::none>, c));
            add(g + "pqpool/probe", bind(validated<validation::probe>, c));
            add(g + "pqpool/ping_if_idle", bind(validated<validation::ping_if_idle>, c));
            add(g + "pqpool/ping", bind(validated<validation::ping>, c));
#ifdef PQPOOL_BENCH_HAVE_SOCI
            add(g + "soci/connection_pool", bind(soci_pool, c));
#endif
        }
        add(g + "connect_per_request", bind(pass_through, c));
    }
    if (!pgbouncer.empty()) {
        add("e2e/pgbouncer/dedicated", bind(dedicated, pgbouncer));
        add("e2e/pgbouncer/pqpool/pass_through", bind(pass_through, pgbouncer));
    }
    if (tls.empty() && tcp.empty() && unix_socket.empty() && pgbouncer.empty()) {
        std::fprintf(stderr, "%s: set PQPOOL_BENCH_CONNINFO_{TLS,TCP,UNIX,PGBOUNCER} (scripts/bench does)\n", argv[0]);
        return 2;
    }

    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
