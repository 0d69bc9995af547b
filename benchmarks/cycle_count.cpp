// N acquire+release cycles on one thread, for one named arm, with no timing of
// its own: scripts/bench runs it under callgrind for two values of N and
// divides the difference in instructions by the difference in N, which
// cancels start-up and tear-down. Deterministic evidence for "zero runtime
// indirection": instructions per cycle of pqpool against the hand-written pool.
//
//   pqpool_bench_cycle_count ARM N      ARM: handwritten | null | null+barging | null+single_thread |
//                                        production | production+barging |
//                                        null+obs=counters | null+obs=histograms | null+obs=leak_detection |
//                                        null+obs=sink | null+obs=all
//
// The null+obs arms give each observability policy's cost per cycle (minus the
// null arm's). obs=sink is a sink that asks for no lease events (as
// observability::tls, or a log of the rare events): it must cost what null
// costs. obs=all combines counters, histograms and leak detection.

#include "baseline_pool.hpp"
#include "bench_connector.hpp"

#include <pqpool/basic_pool.hpp>

#include <charconv>
#include <cstdio>
#include <cstring>
#include <string_view>

using namespace pqpool;
using namespace std::chrono_literals;

namespace {

template <class... Options>
using bench_pool = typename detail::select<bench::null_connector, Options...>::type;

using null_mutex_pool = bench_pool<validation::none, recycling::none, overflow::fixed, retry::none, fork_safety::none>;
using null_single_pool = bench_pool<validation::none, recycling::none, overflow::fixed, retry::none, fork_safety::none,
                                    concurrency::single_thread>;
using null_barging_pool = bench_pool<validation::none, recycling::none, overflow::fixed, retry::none, fork_safety::none,
                                     concurrency::barging>;
using production_pool = bench_pool<overflow::fixed>; // pool<>'s defaults, fixed size 1
using production_barging_pool = bench_pool<overflow::fixed, concurrency::barging>;

// A sink that wants the rare events only (no lease events): nothing on the plain path.
struct rare_events {
    template <class Event>
    void operator()(const Event& e) const noexcept {
        keep_event(e);
    }
    template <class Event>
    static void keep_event(const Event& e) {
        asm volatile("" : : "r,m"(e.kind) : "memory");
    }
};
template <class Observability>
using null_obs_pool =
    bench_pool<validation::none, recycling::none, overflow::fixed, retry::none, fork_safety::none, Observability>;

// Keeps the compiler from dropping or merging the cycles.
template <class T>
inline void keep(T const& v) {
    asm volatile("" : : "r,m"(v) : "memory");
}

void handwritten(unsigned long n) {
    bench::handwritten_pool<bench::null_connection*> pool{1, [] { return new bench::null_connection{}; }};
    for (unsigned long i = 0; i < n; ++i) {
        auto* h = pool.acquire();
        keep(h);
        pool.release(h);
    }
    for (auto* h : pool.handles()) delete h;
}

// Out of line, so that each arm is one function (and its code can be compared).
template <class Pool>
[[gnu::noinline]] void pqpool_cycle(unsigned long n) {
    Pool pool{bench::null_connector{}, overflow::fixed{.size = 1, .wait = 30s}};
    { auto warm = pool.acquire(); } // open the connection before counting
    for (unsigned long i = 0; i < n; ++i) {
        auto lease = pool.acquire();
        keep(lease.get());
    }
}

} // namespace

int main(int argc, char** argv) {
    unsigned long n = 0;
    if (argc != 3 || std::from_chars(argv[2], argv[2] + std::strlen(argv[2]), n).ec != std::errc{}) {
        std::fprintf(stderr, "usage: %s ARM N (see the source for the arms)\n", argv[0]);
        return 2;
    }
    std::string_view arm = argv[1];
    namespace obs = observability;
    if (arm == "handwritten")
        handwritten(n);
    else if (arm == "null")
        pqpool_cycle<null_mutex_pool>(n);
    else if (arm == "null+barging")
        pqpool_cycle<null_barging_pool>(n);
    else if (arm == "null+single_thread")
        pqpool_cycle<null_single_pool>(n);
    else if (arm == "production")
        pqpool_cycle<production_pool>(n);
    else if (arm == "production+barging")
        pqpool_cycle<production_barging_pool>(n);
    else if (arm == "null+obs=counters")
        pqpool_cycle<null_obs_pool<obs::counters>>(n);
    else if (arm == "null+obs=histograms")
        pqpool_cycle<null_obs_pool<obs::histograms>>(n);
    else if (arm == "null+obs=leak_detection")
        pqpool_cycle<null_obs_pool<obs::leak_detection>>(n);
    else if (arm == "null+obs=sink")
        pqpool_cycle<null_obs_pool<obs::sink<rare_events>>>(n);
    else if (arm == "null+obs=all")
        pqpool_cycle<null_obs_pool<obs::combine<obs::counters, obs::histograms, obs::leak_detection>>>(n);
    else {
        std::fprintf(stderr, "%s: unknown arm '%s'\n", argv[0], argv[1]);
        return 2;
    }
    return 0;
}
