// The acquire+release cycle without a network: pqpool's policy combinations
// against a hand-written mutex + condition variable + vector pool, side by side
// in one run.
//
// Names:
//   cycle/ARM                 pool size = threads (uncontended), nothing done while holding
//                             (ARM pqpool/null+obs=P: the null pool with observability policy P)
//   cycle/ARM/work:1us        the same, spinning 1 µs while holding the connection
//   contended/ARM/work:Wns    threads = 2 × pool size, spinning W ns while holding; counters:
//                             acquire latency p50/p99 (ns) over every acquire of every thread,
//                             and the operations each thread had done when the first thread
//                             finished its share (ops_min/ops_max; fairness = min/max, 1 = fair)
//
// The policy matrix is generated at compile time (boost::hana::cartesian_product
// over each listed category's built-in policies): a policy joins it by being
// listed once below, with a name in policy_name.

#include "baseline_pool.hpp"
#include "bench_connector.hpp"

#include <pqpool/basic_pool.hpp>

#include <benchmark/benchmark.h>
#include <boost/hana/cartesian_product.hpp>
#include <boost/hana/for_each.hpp>
#include <boost/hana/tuple.hpp>
#include <boost/hana/type.hpp>
#include <boost/hana/unpack.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

using namespace pqpool;
using namespace std::chrono_literals;
namespace hana = boost::hana;

namespace {

template <class... Options>
using bench_pool = typename detail::select<bench::null_connector, Options...>::type;

using null_single_pool = bench_pool<validation::none, recycling::none, overflow::fixed, retry::none, fork_safety::none,
                                    concurrency::single_thread>;
using null_mutex_pool = bench_pool<validation::none, recycling::none, overflow::fixed, retry::none, fork_safety::none>;
using null_barging_pool = bench_pool<validation::none, recycling::none, overflow::fixed, retry::none, fork_safety::none,
                                     concurrency::barging>;
// The production combination (pool<>'s defaults) with a free connector: ping_if_idle's
// probe and clock read, lifetime with jitter and reset on return, backoff, fork detection.
using production_pool = bench_pool<overflow::fixed>;
using production_barging_pool = bench_pool<overflow::fixed, concurrency::barging>;

// The null pool with one observability policy, for its cost per cycle. The sink asks
// for no lease events (as a log of the rare events, or observability::tls): it must
// cost what the null pool costs.
struct rare_events {
    template <class Event>
    void operator()(const Event& e) const noexcept {
        benchmark::DoNotOptimize(e.kind);
    }
};
template <class Observability>
using null_obs_pool =
    bench_pool<validation::none, recycling::none, overflow::fixed, retry::none, fork_safety::none, Observability>;

// A short name per built-in policy, for benchmark names (the library has none);
// named here even when not (yet) in the matrix.
template <class P>
constexpr std::string_view policy_name = "?";
template <>
[[maybe_unused]] constexpr std::string_view policy_name<validation::none> = "val=none";
template <>
[[maybe_unused]] constexpr std::string_view policy_name<validation::probe> = "val=probe";
template <>
[[maybe_unused]] constexpr std::string_view policy_name<validation::ping_if_idle> = "val=ping_if_idle";
template <>
[[maybe_unused]] constexpr std::string_view policy_name<fork_safety::none> = "fork=none";
template <>
[[maybe_unused]] constexpr std::string_view policy_name<fork_safety::detect> = "fork=detect";
template <>
[[maybe_unused]] constexpr std::string_view policy_name<concurrency::mutex> = "conc=mutex";
template <>
[[maybe_unused]] constexpr std::string_view policy_name<concurrency::barging> = "conc=barging";
template <>
[[maybe_unused]] constexpr std::string_view policy_name<concurrency::single_thread> = "conc=single_thread";
template <>
[[maybe_unused]] constexpr std::string_view policy_name<recycling::none> = "recyc=none";
template <>
[[maybe_unused]] constexpr std::string_view policy_name<recycling::limits> = "recyc=limits";

// The matrix: every combination of these, with overflow::fixed and retry::none.
constexpr auto matrix = hana::cartesian_product(hana::make_tuple(
    hana::tuple_t<validation::none, validation::probe>, hana::tuple_t<fork_safety::none, fork_safety::detect>,
    hana::tuple_t<concurrency::mutex>, hana::tuple_t<recycling::none, recycling::limits>));

struct handwritten_tag {};

// FIFO with the spin limit of before (20 µs), beside the default (100 µs):
// what spinning through a hold buys when a CPU is free.
struct mutex_spin_20us : concurrency::mutex {
    mutex_spin_20us() { spin = std::chrono::microseconds{20}; }
};
using null_spin_20us_pool =
    bench_pool<validation::none, recycling::none, overflow::fixed, retry::none, fork_safety::none, mutex_spin_20us>;

// Busy-waits (no sleep: a sleep would hand the CPU to the waiters) for `ns`.
inline void hold(std::chrono::nanoseconds ns) {
    if (ns.count() == 0) return;
    const auto until = std::chrono::steady_clock::now() + ns;
    while (std::chrono::steady_clock::now() < until) {}
}

constexpr int max_threads = 64;

// Per-thread records, each on its own cache line; written by their thread
// during the loop, read by thread 0 after Google Benchmark's closing barrier.
struct alignas(64) thread_record {
    std::atomic<std::uint64_t> ops{0};
    std::vector<std::uint32_t> latency_ns;
};
std::array<thread_record, max_threads> records;
std::atomic<bool> first_done{false};
std::array<std::uint64_t, max_threads> ops_when_first_done{};

template <class Pool>
struct arm {
    std::unique_ptr<Pool> pool;
    void open(std::size_t size) {
        pool = std::make_unique<Pool>(bench::null_connector{}, overflow::fixed{.size = size, .wait = 30s});
        std::vector<typename Pool::lease> warm; // open every connection before timing
        for (std::size_t i = 0; i < size; ++i) warm.push_back(pool->acquire());
    }
    auto acquire() { return pool->acquire(); }
    static auto* get(typename Pool::lease& l) { return l.get(); }
    void release(typename Pool::lease&) {}
    void close() { pool.reset(); }
};

template <>
struct arm<handwritten_tag> {
    std::unique_ptr<bench::handwritten_pool<bench::null_connection*>> pool;
    void open(std::size_t size) {
        pool = std::make_unique<bench::handwritten_pool<bench::null_connection*>>(
            size, [] { return new bench::null_connection{}; });
    }
    bench::null_connection* acquire() { return pool->acquire(); }
    static auto* get(bench::null_connection* h) { return h; }
    void release(bench::null_connection* h) { pool->release(h); }
    void close() {
        for (auto* h : pool->handles()) delete h;
        pool.reset();
    }
};

// Google Benchmark's threads start together and share the static arm; thread 0
// sets it up before the timed loop of any thread begins (the loop's opening
// barrier), and tears it down after the closing one.
template <class Pool>
void cycle(benchmark::State& state, bool contended, std::chrono::nanoseconds work) {
    static arm<Pool> a;
    const auto threads = static_cast<std::size_t>(state.threads());
    const auto t = static_cast<std::size_t>(state.thread_index());
    if (t == 0) {
        a.open(contended ? threads / 2 : threads);
        first_done = false;
    }
    if (!contended) {
        for (auto _ : state) {
            auto h = a.acquire();
            benchmark::DoNotOptimize(arm<Pool>::get(h));
            hold(work);
            a.release(h);
        }
    } else {
        auto& rec = records[t];
        rec.ops.store(0, std::memory_order_relaxed);
        rec.latency_ns.clear();
        rec.latency_ns.reserve(static_cast<std::size_t>(state.max_iterations));
        for (auto _ : state) {
            const auto t0 = std::chrono::steady_clock::now();
            std::chrono::steady_clock::time_point t1;
            {
                auto h = a.acquire();
                t1 = std::chrono::steady_clock::now();
                benchmark::DoNotOptimize(arm<Pool>::get(h));
                hold(work);
                a.release(h);
            } // a lease returns here
            rec.latency_ns.push_back(static_cast<std::uint32_t>(
                std::min<std::int64_t>((t1 - t0) / 1ns, std::numeric_limits<std::uint32_t>::max())));
            const auto done = rec.ops.load(std::memory_order_relaxed) + 1;
            rec.ops.store(done, std::memory_order_relaxed);
            // Every thread runs the same number of iterations; what the others had done
            // when the fastest one finished shows whether some threads barge ahead of
            // waiters. (Taken inside the loop: the loop ends with a barrier.)
            if (done == static_cast<std::uint64_t>(state.max_iterations) && !first_done.exchange(true))
                for (std::size_t i = 0; i < threads; ++i)
                    ops_when_first_done[i] = records[i].ops.load(std::memory_order_relaxed);
        }
    }
    if (t == 0) {
        a.close();
        if (contended) {
            std::vector<std::uint32_t> all;
            for (std::size_t i = 0; i < threads; ++i)
                all.insert(all.end(), records[i].latency_ns.begin(), records[i].latency_ns.end());
            auto pct = [&](double p) {
                if (all.empty()) return 0.0;
                auto k = all.begin() + static_cast<std::ptrdiff_t>(p * static_cast<double>(all.size() - 1));
                std::nth_element(all.begin(), k, all.end());
                return static_cast<double>(*k);
            };
            state.counters["acq_p50_ns"] = pct(0.50);
            state.counters["acq_p99_ns"] = pct(0.99);
            auto [lo, hi] = std::minmax_element(ops_when_first_done.begin(),
                                                ops_when_first_done.begin() + static_cast<std::ptrdiff_t>(threads));
            state.counters["ops_min"] = static_cast<double>(*lo);
            state.counters["ops_max"] = static_cast<double>(*hi);
            state.counters["fairness"] = *hi ? static_cast<double>(*lo) / static_cast<double>(*hi) : 0.0;
        }
    }
}

template <class Pool>
void add(const std::string& arm_name, bool with_variants) {
    auto reg = [&](const std::string& name, bool contended, std::chrono::nanoseconds work) {
        auto* b = benchmark::RegisterBenchmark(
            name.c_str(), [contended, work](benchmark::State& s) { cycle<Pool>(s, contended, work); });
        for (int t = contended ? 2 : 1; t <= 8; t *= 2) b->Threads(t);
        b->UseRealTime();
    };
    reg("cycle/" + arm_name, false, 0ns);
    if (!with_variants) return;
    reg("cycle/" + arm_name + "/work:1us", false, 1us);
    reg("contended/" + arm_name + "/work:0ns", true, 0ns);
    reg("contended/" + arm_name + "/work:1us", true, 1us);
    reg("contended/" + arm_name + "/work:50us", true, 50us);
}

} // namespace

int main(int argc, char** argv) {
    add<handwritten_tag>("handwritten", true);
    add<null_mutex_pool>("pqpool/null", true);
    add<null_barging_pool>("pqpool/null+barging", true);
    add<null_spin_20us_pool>("pqpool/null+spin=20us", true);
    add<production_pool>("pqpool/production", true);
    add<production_barging_pool>("pqpool/production+barging", true);
    add<null_obs_pool<observability::sink<rare_events>>>("pqpool/null+obs=sink", false);
    add<null_obs_pool<observability::counters>>("pqpool/null+obs=counters", false);
    add<null_obs_pool<observability::histograms>>("pqpool/null+obs=histograms", false);
    add<null_obs_pool<observability::leak_detection>>("pqpool/null+obs=leak_detection", false);
    hana::for_each(matrix, [](auto combo) {
        using pool_type = typename decltype(hana::unpack(combo, [](auto... p) {
            return hana::type_c<bench_pool<typename decltype(p)::type..., overflow::fixed, retry::none>>;
        }))::type;
        std::string name = "pqpool";
        char sep = '/';
        hana::for_each(combo, [&](auto p) {
            name += sep;
            name += policy_name<typename decltype(p)::type>;
            sep = ',';
        });
        add<pool_type>(name, false);
    });
    benchmark::RegisterBenchmark("cycle/pqpool/null+single_thread",
                                 [](benchmark::State& s) { cycle<null_single_pool>(s, false, 0ns); })
        ->Threads(1)
        ->UseRealTime();

    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
