// Observability policies against the fake connector: events and their
// context, close reasons, counters, histograms, sinks, the combinator, leak
// detection, the logfmt writer and the Prometheus exposition's text. (The
// exposition checked by promtool, TLS facts and passwords: tests/integration.)

#include "catch.hpp"
#include "child.hpp"
#include "event_recorder.hpp"
#include "test_pool.hpp"

#include <pqpool/observability/logfmt.hpp>
#include <pqpool/observability/prometheus.hpp>
#include <pqpool/observability/tls.hpp>
#include <pqpool/pool.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

using namespace pqpool;
using namespace pqpool::test;
using observability::combine;
using observability::sink;

namespace {

bool ends_with(const std::string& s, std::string_view tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// The kinds of the recorded events, in order.
std::vector<event> kinds(const event_recorder& r) {
    std::vector<event> out;
    for (auto& e : r.events()) out.push_back(e.kind);
    return out;
}

// A recycling policy that retires a connection after one lease and does not say why.
struct one_use : recycling::none {
    template <class Info, class TimePoint>
    bool keep_on_acquire(const Info& info, TimePoint) const noexcept {
        return info.uses < 1;
    }
    template <class C, class Info, class TimePoint>
    bool keep_on_release(C&, Info& info, TimePoint now) const noexcept {
        return keep_on_acquire(info, now);
    }
};

template <class... Options>
using recorded_manual = manual_pool<retry::none, fork_safety::none, sink<event_recorder>, Options...>;

} // namespace

// --- log_histogram

TEST_CASE("log_histogram: buckets tile the durations, and every power of two from 2^7 to 2^43 ns is an edge",
          "[observability][histogram]") {
    using h = log_histogram;
    for (std::size_t i = 0; i + 1 < h::bucket_count; ++i) {
        CHECK(h::lower_edge(i) < h::upper_edge(i));
        CHECK(h::upper_edge(i) == h::lower_edge(i + 1));
    }
    for (unsigned e = h::min_exponent; e <= h::max_exponent; ++e) {
        const std::uint64_t edge = std::uint64_t{1} << e;
        const std::size_t i = h::bucket_of(edge);
        CHECK(h::upper_edge(i).count() == static_cast<std::int64_t>(edge)); // an edge belongs to the bucket below it
        if (e < h::max_exponent)
            CHECK(h::lower_edge(h::bucket_of(edge + 1)).count() == static_cast<std::int64_t>(edge));
    }
    CHECK(h::bucket_of(0) == 0);
    CHECK(h::bucket_of(128) == 0);
    CHECK(h::bucket_of(129) == 1);
    CHECK(h::bucket_of(std::uint64_t{1} << 50) == h::bucket_count - 1);
    CHECK(h::upper_edge(h::bucket_count - 1) == std::chrono::nanoseconds::max());
}

TEST_CASE("log_histogram: a percentile is within 12.5% of the true value, and counts at an edge are exact",
          "[observability][histogram]") {
    std::mt19937_64 rng(12);
    std::uniform_real_distribution<double> exponent(7.0, 42.9);
    for (int i = 0; i < 2000; ++i) {
        const auto v = static_cast<std::int64_t>(std::pow(2.0, exponent(rng)));
        log_histogram h;
        h.record(std::chrono::nanoseconds{v});
        const auto p = h.percentile(1.0).count();
        INFO("value " << v << " ns, p100 " << p << " ns");
        CHECK(std::abs(p - v) <= v / 8);
    }
    // 1 µs … 1000 µs, one each: p50 is 500 µs, p99 990 µs.
    log_histogram h;
    std::uint64_t at_most_2_20 = 0;
    for (int us = 1; us <= 1000; ++us) {
        h.record(std::chrono::microseconds{us});
        at_most_2_20 += us * 1000 <= (1 << 20);
    }
    CHECK(h.count() == 1000);
    CHECK(h.sum() == std::chrono::microseconds{500500});
    CHECK(std::abs(h.percentile(0.5).count() - 500'000) <= 500'000 / 8);
    CHECK(std::abs(h.percentile(0.99).count() - 990'000) <= 990'000 / 8);
    CHECK(h.read().count_at_most(std::chrono::nanoseconds{1 << 20}) == at_most_2_20);
    CHECK(log_histogram{}.percentile(0.99) == std::chrono::nanoseconds{0});
}

TEST_CASE("log_histogram: records from several threads at once are all counted", "[observability][histogram]") {
    log_histogram h;
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&h, t] {
            for (int i = 0; i < 50'000; ++i) h.record(std::chrono::nanoseconds{(t + 1) * 1000});
        });
    for (auto& t : threads) t.join();
    CHECK(h.count() == 200'000);
    CHECK(h.sum() == std::chrono::nanoseconds{50'000LL * (1000 + 2000 + 3000 + 4000)});
}

// --- what none costs

TEST_CASE("observability::none: no event is built, no field is added, acquire takes no location", "[observability]") {
    using p = null_pool<overflow::fixed>;
    STATIC_REQUIRE(std::is_same_v<p::observability_policy_type, observability::none>);
    STATIC_REQUIRE(detail::observer_traits<observability::none>::silent);
    STATIC_REQUIRE(std::is_empty_v<observability::none>);
    STATIC_REQUIRE(std::is_empty_v<p::source_location_type>);
    // The pool's record of a connection is connection_info itself, to the byte.
    STATIC_REQUIRE(sizeof(p::lease::info_type) ==
                   sizeof(connection_info<fake_connection*, std::chrono::steady_clock::time_point>));
    // Counters need the broken mark and lease stamps; only leak detection takes a location.
    using c = null_pool<overflow::fixed, observability::counters>;
    STATIC_REQUIRE(std::is_empty_v<c::source_location_type>);
    STATIC_REQUIRE(sizeof(c::lease::info_type) >
                   sizeof(connection_info<fake_connection*, std::chrono::steady_clock::time_point>));
    using l = null_pool<overflow::fixed, observability::leak_detection>;
    STATIC_REQUIRE(std::is_same_v<l::source_location_type, pqpool::source_location>);
}

TEST_CASE("a sink gets the rare events only unless it asks for lease events", "[observability][sink]") {
    event_recorder rare;
    lease_recorder leases;
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed, combine<sink<event_recorder>, sink<lease_recorder>>> pool{
        fake_connector<>{s}, overflow::fixed{.size = 1},
        combine<sink<event_recorder>, sink<lease_recorder>>{sink<event_recorder>{rare}, sink<lease_recorder>{leases}}};
    STATIC_REQUIRE_FALSE(sink<event_recorder>::lease_events);
    STATIC_REQUIRE(sink<lease_recorder>::lease_events);
    for (int i = 0; i < 3; ++i) (void)pool.acquire();
    CHECK(kinds(rare) == std::vector{event::connected});
    CHECK(kinds(leases) == std::vector{event::connected, event::acquired, event::returned, event::acquired,
                                       event::returned, event::acquired, event::returned});
    const auto acquired = leases.of(event::acquired);
    CHECK(acquired.back().connection == 1);
    CHECK(acquired.back().uses == 3);
    CHECK(acquired.back().wait.has_value());
    CHECK(leases.of(event::returned).back().hold.has_value());
}

TEST_CASE("a sink of a lambda that captures is passed to the constructor and called directly",
          "[observability][sink]") {
    int connected = 0;
    auto on_event = [&connected](const auto& e) noexcept { connected += e.kind == event::connected; };
    using lambda_sink = sink<decltype(on_event)>;
    STATIC_REQUIRE_FALSE(std::is_default_constructible_v<lambda_sink>);
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed, lambda_sink> pool{fake_connector<>{s}, overflow::fixed{.size = 2},
                                                 lambda_sink{on_event}};
    {
        auto a = pool.acquire();
        auto b = pool.acquire();
    }
    CHECK(connected == 2);
}

// --- events and their context

TEST_CASE("events carry their context: connection, handle, durations, errors", "[observability]") {
    event_recorder r;
    auto s = std::make_shared<fake_server>();
    s->connect_delay = 7ms; // manual time: a connect takes exactly this
    recorded_manual<validation::none, recycling::none, overflow::fixed> pool{
        fake_connector<manual_clock>{s}, overflow::fixed{.size = 2}, sink<event_recorder>{r}};
    {
        auto a = pool.acquire();
        auto b = pool.acquire();
    }
    auto connected = r.of(event::connected);
    REQUIRE(connected.size() == 2);
    CHECK(connected[0].connection == 1);
    CHECK(connected[1].connection == 2);
    CHECK(connected[0].has_handle);
    CHECK(connected[0].connect_time == std::chrono::nanoseconds{7ms});
    CHECK(connected[0].reason == close_reason::none);

    s->fail_next({fault::permanent, "28P01"});
    pool.invalidate(); // both idle connections are retired at the next acquires
    CHECK_THROWS_AS(pool.acquire(), connect_error);
    auto failed = r.of(event::connect_failed);
    REQUIRE(failed.size() == 1);
    CHECK(failed[0].error == "fake: authentication failed");
    CHECK(failed[0].sqlstate == "28P01");
    CHECK_FALSE(failed[0].transient);
    CHECK(failed[0].connect_time == std::chrono::nanoseconds{7ms});
    CHECK(failed[0].connection == 0);
    auto retired = r.of(event::retired);
    REQUIRE(retired.size() == 2);
    CHECK(retired[0].reason == close_reason::epoch);
    CHECK(retired[0].connection == 1); // the idle stack gives the last returned first (a, destroyed after b)
    CHECK(retired[0].uses == 1);
    CHECK(retired[0].age.has_value());
}

TEST_CASE("a retry event carries its backoff and the failure that caused it", "[observability]") {
    event_recorder r;
    auto s = std::make_shared<fake_server>();
    manual_pool<validation::none, recycling::none, fixed_delay, fork_safety::none, overflow::fixed,
                sink<event_recorder>>
        pool{fake_connector<manual_clock>{s}, overflow::fixed{.size = 1, .wait = 10s},
             fixed_delay{.delay = 250ms, .attempts = 3}, sink<event_recorder>{r}};
    s->fail_next({fault::transient, "08001"});
    auto l = pool.acquire();
    CHECK(kinds(r) == std::vector{event::connect_failed, event::retry, event::connected});
    const auto retry = r.of(event::retry).at(0);
    CHECK(retry.backoff == std::chrono::nanoseconds{250ms});
    CHECK(retry.error == "fake: server unreachable");
    CHECK(retry.sqlstate == "08001");
    CHECK(r.of(event::connect_failed).at(0).transient);
}

TEST_CASE("timeout and exhausted events, a timeout with its wait", "[observability]") {
    event_recorder r;
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed, sink<event_recorder>> pool{fake_connector<>{s}, overflow::fixed{.size = 1},
                                                          sink<event_recorder>{r}};
    auto held = pool.acquire();
    CHECK_THROWS_AS(pool.acquire_for(3ms), timeout_error);
    CHECK_THROWS_AS(pool.acquire_for(0ms), exhausted_error);
    CHECK(kinds(r) == std::vector{event::connected, event::timeout, event::exhausted});
    CHECK(r.of(event::timeout).at(0).wait == std::chrono::nanoseconds{3ms});
    CHECK(r.of(event::timeout).at(0).error.empty()); // connects were not failing
}

// --- why connections close

TEST_CASE("close reasons: lifetime, idle and uses (recycling::limits)", "[observability]") {
    event_recorder r;
    auto s = std::make_shared<fake_server>();
    SECTION("lifetime: retired when acquired after it expired") {
        recorded_manual<validation::none, recycling::limits, overflow::fixed> pool{
            fake_connector<manual_clock>{s}, recycling::limits{.max_lifetime = 10s, .jitter = 0ms},
            sink<event_recorder>{r}};
        (void)pool.acquire();
        manual_clock::advance(11s);
        (void)pool.acquire();
        auto retired = r.of(event::retired);
        REQUIRE(retired.size() == 1);
        CHECK(retired[0].reason == close_reason::lifetime);
        CHECK(retired[0].connection == 1);
        CHECK(retired[0].age >= std::chrono::nanoseconds{11s});
    }
    SECTION("idle: trimmed by maintain() after idling too long") {
        recorded_manual<validation::none, recycling::limits, overflow::fixed> pool{
            fake_connector<manual_clock>{s}, recycling::limits{.max_lifetime = 0ms, .jitter = 0ms, .max_idle = 1s},
            sink<event_recorder>{r}};
        (void)pool.acquire();
        manual_clock::advance(2s);
        CHECK(pool.maintain().closed == 1);
        auto retired = r.of(event::retired);
        REQUIRE(retired.size() == 1);
        CHECK(retired[0].reason == close_reason::idle);
    }
    SECTION("uses: retired on the release that used it up") {
        recorded_manual<validation::none, recycling::limits, overflow::fixed> pool{
            fake_connector<manual_clock>{s}, recycling::limits{.max_lifetime = 0ms, .jitter = 0ms, .max_uses = 2},
            sink<event_recorder>{r}};
        (void)pool.acquire();
        CHECK(r.count(event::retired) == 0);
        (void)pool.acquire();
        auto retired = r.of(event::retired);
        REQUIRE(retired.size() == 1);
        CHECK(retired[0].reason == close_reason::uses);
        CHECK(retired[0].uses == 2);
    }
}

TEST_CASE("close reasons: validation, broken, reset failed, epoch, surplus, pool closed, recycled", "[observability]") {
    event_recorder r;
    auto s = std::make_shared<fake_server>();
    SECTION("validation") {
        recorded_manual<validation::probe, recycling::none, overflow::fixed> pool{fake_connector<manual_clock>{s},
                                                                                  sink<event_recorder>{r}};
        (void)pool.acquire();
        s->kill(&s->connection(0));
        (void)pool.acquire();
        auto failed = r.of(event::validation_failed);
        REQUIRE(failed.size() == 1);
        CHECK(failed[0].reason == close_reason::validation);
        CHECK(failed[0].connection == 1);
    }
    SECTION("broken") {
        recorded_manual<validation::none, recycling::none, overflow::fixed> pool{fake_connector<manual_clock>{s},
                                                                                 sink<event_recorder>{r}};
        pool.acquire().mark_broken();
        CHECK(r.of(event::retired).at(0).reason == close_reason::broken);
    }
    SECTION("reset failed") {
        recorded_manual<validation::none, recycling::limits, overflow::fixed> pool{fake_connector<manual_clock>{s},
                                                                                   sink<event_recorder>{r}};
        auto l = pool.acquire();
        l.get()->busy = true; // a command still running: the reset refuses it
        l.release();
        CHECK(r.of(event::retired).at(0).reason == close_reason::reset_failed);
    }
    SECTION("epoch, on release") {
        recorded_manual<validation::none, recycling::none, overflow::fixed> pool{fake_connector<manual_clock>{s},
                                                                                 sink<event_recorder>{r}};
        auto l = pool.acquire();
        pool.invalidate();
        l.release();
        CHECK(r.of(event::retired).at(0).reason == close_reason::epoch);
    }
    SECTION("surplus: more idle than the overflow policy keeps") {
        recorded_manual<validation::none, recycling::none, overflow::bounded> pool{
            fake_connector<manual_clock>{s}, overflow::bounded{.size = 1, .max_overflow = 1}, sink<event_recorder>{r}};
        {
            auto a = pool.acquire();
            auto b = pool.acquire();
        }
        auto trimmed = r.of(event::trimmed);
        REQUIRE(trimmed.size() == 1);
        CHECK(trimmed[0].reason == close_reason::surplus);
        CHECK(r.count(event::retired) == 0);
    }
    SECTION("pool closed: idle ones at close(), leases out when they come back") {
        recorded_manual<validation::none, recycling::none, overflow::fixed> pool{
            fake_connector<manual_clock>{s}, overflow::fixed{.size = 2}, sink<event_recorder>{r}};
        auto a = pool.acquire();
        (void)pool.acquire();
        pool.close();
        CHECK(r.of(event::retired).size() == 1);
        a.release();
        auto retired = r.of(event::retired);
        REQUIRE(retired.size() == 2);
        CHECK(retired[0].reason == close_reason::pool_closed);
        CHECK(retired[1].reason == close_reason::pool_closed);
        CHECK(r.count(event::trimmed) == 0);
    }
    SECTION("recycled: a recycling policy that does not say why") {
        recorded_manual<validation::none, one_use, overflow::fixed> pool{fake_connector<manual_clock>{s},
                                                                         sink<event_recorder>{r}};
        (void)pool.acquire();
        CHECK(r.of(event::retired).at(0).reason == close_reason::recycled);
    }
}

TEST_CASE("events come after the pool is destroyed, while leases are out", "[observability]") {
    event_recorder r;
    auto s = std::make_shared<fake_server>();
    std::optional<null_pool<overflow::fixed, sink<event_recorder>>::lease> out;
    {
        null_pool<overflow::fixed, sink<event_recorder>> pool{fake_connector<>{s}, sink<event_recorder>{r}};
        out.emplace(pool.acquire());
    }
    CHECK(r.count(event::retired) == 0);
    out->release();
    const auto retired = r.of(event::retired);
    REQUIRE(retired.size() == 1);
    CHECK(retired[0].reason == close_reason::pool_closed);
    CHECK(s->open() == 0);
}

TEST_CASE("an observer's fork-aware lock held by another thread at fork() does not hang the child",
          "[observability][fork_safety]") {
    detail::fork_aware_lock lock;
    std::atomic<bool> held{false}, done{false};
    std::thread holder([&] {
        std::lock_guard g(lock);
        held = true;
        while (!done) std::this_thread::yield();
    });
    while (!held) std::this_thread::yield();
    const int code = in_child([&] {
        ::alarm(10); // a hang kills the child instead of the suite
        std::lock_guard g(lock);
        return 0;
    });
    done = true;
    holder.join();
    CHECK(code == 0);
    std::lock_guard g(lock); // and the parent's lock still works
}

TEST_CASE("close reasons: fork (the child abandons inherited connections)", "[observability][fork_safety]") {
    event_recorder r;
    auto s = std::make_shared<fake_server>();
    fake_pool<validation::none, recycling::none, retry::none, overflow::fixed, fork_safety::detect,
              sink<event_recorder>>
        pool{fake_connector<>{s}, overflow::fixed{.size = 2}, sink<event_recorder>{r}};
    auto inherited = pool.acquire();
    (void)pool.acquire(); // connection 2, idle at the fork
    const int code = in_child([&] {
        r.clear();
        auto l = pool.acquire();
        inherited.release();
        const auto seen = r.events();
        // fork_detected, the idle connection abandoned, a new one, then the inherited lease abandoned.
        if (kinds(r) != std::vector{event::fork_detected, event::retired, event::connected, event::retired}) return 1;
        if (seen[1].reason != close_reason::fork || seen[1].connection != 2) return 2;
        if (seen[3].reason != close_reason::fork || seen[3].connection != 1) return 3;
        return 0;
    });
    CHECK(code == 0);
}

// --- counters and histograms

TEST_CASE("observability::counters counts each kind of event and each close reason", "[observability]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed, observability::counters> pool{fake_connector<>{s},
                                                             overflow::fixed{.size = 1, .wait = 1ms}};
    {
        auto l = pool.acquire();
        CHECK_THROWS_AS(pool.acquire(), timeout_error);
        CHECK_THROWS_AS(pool.acquire_for(0ms), exhausted_error);
        l.mark_broken();
    }
    s->fail_next({fault::permanent, "28P01"});
    CHECK_THROWS_AS(pool.acquire(), connect_error);
    (void)pool.acquire();
    pool.invalidate();
    (void)pool.acquire(); // the idle one is retired (epoch), a new one opened
    pool.close();         // which is closed with the pool

    const auto& c = pool.observer();
    CHECK(c.count(event::connected) == 3);
    CHECK(c.count(event::connect_failed) == 1);
    CHECK(c.count(event::retry) == 0);
    CHECK(c.count(event::validation_failed) == 0);
    CHECK(c.count(event::retired) == 3);
    CHECK(c.count(event::trimmed) == 0);
    CHECK(c.count(event::timeout) == 1);
    CHECK(c.count(event::exhausted) == 1);
    CHECK(c.count(event::fork_detected) == 0);
    CHECK(c.count(event::acquired) == 3);
    CHECK(c.count(event::returned) == 3);
    CHECK(c.count(event::leak_suspected) == 0);
    CHECK(c.closed(close_reason::broken) == 1);
    CHECK(c.closed(close_reason::epoch) == 1);
    CHECK(c.closed(close_reason::pool_closed) == 1);
    for (auto r : {close_reason::lifetime, close_reason::idle, close_reason::uses, close_reason::validation,
                   close_reason::reset_failed, close_reason::fork, close_reason::surplus, close_reason::recycled})
        CHECK(c.closed(r) == 0);
    CHECK(c.closed(close_reason::none) == 0);
    // Every connection closed is one close event.
    CHECK(c.count(event::validation_failed) + c.count(event::retired) + c.count(event::trimmed) ==
          static_cast<std::uint64_t>(s->closes));
}

TEST_CASE("observability::counters sums waits, holds and connect times to the nanosecond (manual clock)",
          "[observability]") {
    auto s = std::make_shared<fake_server>();
    s->connect_delay = 7ms;
    manual_pool<validation::none, recycling::none, retry::none, fork_safety::none, overflow::fixed,
                observability::counters>
        pool{fake_connector<manual_clock>{s}};
    {
        auto l = pool.acquire(); // waits for its connect: 7 ms
        manual_clock::advance(5ms);
    }
    {
        auto l = pool.acquire(); // idle: no wait
        manual_clock::advance(3ms);
    }
    const auto& c = pool.observer();
    CHECK(c.count(event::acquired) == 2);
    CHECK(c.count(event::returned) == 2);
    CHECK(c.wait_total() == std::chrono::nanoseconds{7ms});
    CHECK(c.hold_total() == std::chrono::nanoseconds{8ms});
    CHECK(c.connect_total() == std::chrono::nanoseconds{7ms});
}

TEST_CASE("observability::histograms: totals and percentiles match what the pool did (manual clock)",
          "[observability][histogram]") {
    auto s = std::make_shared<fake_server>();
    s->connect_delay = 20ms;
    manual_pool<validation::none, recycling::none, retry::none, fork_safety::none, overflow::fixed,
                observability::histograms>
        pool{fake_connector<manual_clock>{s}};
    for (int i = 0; i < 99; ++i) {
        auto l = pool.acquire();
        manual_clock::advance(1ms);
    }
    {
        auto l = pool.acquire();
        manual_clock::advance(100ms);
    }
    const auto& h = pool.observer();
    CHECK(h.connect().count() == 1);
    CHECK(h.connect().sum() == std::chrono::nanoseconds{20ms});
    CHECK(h.wait().count() == 100);
    CHECK(h.wait().sum() == std::chrono::nanoseconds{20ms}); // the first acquire waited for the connect
    CHECK(h.hold().count() == 100);
    CHECK(h.hold().sum() == std::chrono::nanoseconds{199ms});
    const auto p50 = h.hold().percentile(0.5);
    const auto p100 = h.hold().percentile(1.0);
    CHECK(std::abs(p50.count() - 1'000'000) <= 1'000'000 / 8);
    CHECK(std::abs(p100.count() - 100'000'000) <= 100'000'000 / 8);
    // 99 acquires waited nothing: the p99 wait is in the first bucket.
    CHECK(h.wait().percentile(0.99) <= std::chrono::nanoseconds{128});
}

TEST_CASE("observability::combine feeds every member, and one that wants no lease events gets none",
          "[observability]") {
    event_recorder rare;
    using obs = combine<observability::counters, observability::histograms, sink<event_recorder>>;
    STATIC_REQUIRE(obs::times_leases);
    STATIC_REQUIRE(obs::times_connects);
    STATIC_REQUIRE_FALSE(obs::tracks_leaks);
    STATIC_REQUIRE_FALSE(obs::silent);
    STATIC_REQUIRE(obs::has<observability::histograms>);
    STATIC_REQUIRE_FALSE(obs::has<observability::leak_detection>);
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed, obs> pool{
        fake_connector<>{s}, obs{observability::counters{}, observability::histograms{}, sink<event_recorder>{rare}}};
    for (int i = 0; i < 5; ++i) (void)pool.acquire();
    const auto& o = pool.observer();
    CHECK(o.get<observability::counters>().count(event::acquired) == 5);
    CHECK(o.get<observability::histograms>().hold().count() == 5);
    CHECK(o.get<observability::histograms>().connect().count() == 1);
    CHECK(kinds(rare) == std::vector{event::connected});
}

// --- leak detection

namespace {
using leak_obs = combine<observability::leak_detection, sink<lease_recorder>>;
using leak_pool =
    manual_pool<validation::none, recycling::none, retry::none, fork_safety::none, overflow::fixed, leak_obs>;

leak_pool make_leak_pool(std::shared_ptr<fake_server> s, const lease_recorder& r, std::chrono::milliseconds threshold,
                         std::size_t size = 2) {
    return leak_pool{fake_connector<manual_clock>{std::move(s)}, overflow::fixed{.size = size},
                     leak_obs{observability::leak_detection{.threshold = threshold}, sink<lease_recorder>{r}}};
}
} // namespace

TEST_CASE("leak_detection: a lease held too long is reported once, with the acquire's file and line, and again "
          "when it comes back",
          "[observability][leak]") {
    lease_recorder r;
    auto s = std::make_shared<fake_server>();
    auto pool = make_leak_pool(s, r, 1s);
    const unsigned line = __LINE__ + 1;
    auto leaked = pool.acquire();
    manual_clock::advance(999ms);
    pool.maintain();
    CHECK(r.count(event::leak_suspected) == 0); // not yet
    manual_clock::advance(1ms);
    pool.maintain();
    auto suspected = r.of(event::leak_suspected);
    REQUIRE(suspected.size() == 1);
    CHECK(suspected[0].connection == 1);
    CHECK(suspected[0].uses == 1);
    CHECK(suspected[0].hold == std::chrono::nanoseconds{1s});
    CHECK(ends_with(suspected[0].file, "observability_test.cpp"));
    CHECK(suspected[0].line == line);
    manual_clock::advance(5s);
    pool.maintain();
    CHECK(r.count(event::leak_suspected) == 1); // once
    manual_clock::advance(500ms);
    leaked.release();
    auto back = r.of(event::leak_returned);
    REQUIRE(back.size() == 1);
    CHECK(back[0].hold == std::chrono::nanoseconds{6500ms});
    CHECK(back[0].line == line);
    // The acquired and returned events carry the location too.
    CHECK(r.of(event::acquired).at(0).line == line);
    CHECK(r.of(event::returned).at(0).line == line);
}

TEST_CASE("leak_detection: found on the pool's own calls at most threshold / 8 after it became overdue",
          "[observability][leak]") {
    lease_recorder r;
    auto s = std::make_shared<fake_server>();
    auto pool = make_leak_pool(s, r, 800ms); // looks at most every 100 ms
    const unsigned line = __LINE__ + 1;
    auto leaked = pool.acquire(); // t = 0: a look (nothing out); the next one from t = 100 ms
    manual_clock::advance(750ms);
    auto other = pool.try_acquire(); // t = 750: a look; nothing overdue yet; the next one from t = 850 ms
    REQUIRE(other);
    manual_clock::advance(60ms);
    other->release(); // t = 810: overdue since t = 800, but within 100 ms of the last look
    CHECK(r.count(event::leak_suspected) == 0);
    manual_clock::advance(40ms);
    other = pool.try_acquire(); // t = 850: looks, and finds it
    auto suspected = r.of(event::leak_suspected);
    REQUIRE(suspected.size() == 1);
    CHECK(suspected[0].line == line);
    CHECK(suspected[0].hold == std::chrono::nanoseconds{850ms});
}

TEST_CASE("leak_detection: when every connection leaked, the acquire that fails still reports them",
          "[observability][leak]") {
    lease_recorder r;
    auto s = std::make_shared<fake_server>();
    auto pool = make_leak_pool(s, r, 1s, 1);
    auto leaked = pool.acquire();
    manual_clock::advance(2s);
    CHECK_THROWS_AS(pool.acquire_for(0ms), exhausted_error);
    CHECK(r.count(event::leak_suspected) == 1);
}

TEST_CASE("leak_detection: a lease back within the threshold is never reported, and each call site is recorded",
          "[observability][leak]") {
    lease_recorder r;
    auto s = std::make_shared<fake_server>();
    auto pool = make_leak_pool(s, r, 1s);
    std::vector<unsigned> lines;
    {
        lines.push_back(__LINE__ + 1);
        auto a = pool.acquire();
        manual_clock::advance(999ms);
    }
    {
        lines.push_back(__LINE__ + 1);
        auto b = pool.acquire_for(5ms);
    }
    {
        lines.push_back(__LINE__ + 1);
        auto c = pool.try_acquire();
    }
    lines.push_back(__LINE__ + 1);
    pool.run([](fake_connection*) {});
    manual_clock::advance(10s);
    pool.maintain();
    CHECK(r.count(event::leak_suspected) == 0);
    CHECK(r.count(event::leak_returned) == 0);
    std::vector<unsigned> seen;
    for (auto& e : r.of(event::acquired)) seen.push_back(e.line);
    CHECK(seen == lines);
}

TEST_CASE("leak_detection: a threshold of zero is refused, and the default is 60 s", "[observability][leak]") {
    CHECK(observability::leak_detection{}.threshold == 60s);
    auto s = std::make_shared<fake_server>();
    CHECK_THROWS_WITH((null_pool<overflow::fixed, observability::leak_detection>{
                          fake_connector<>{s}, observability::leak_detection{.threshold = 0ms}}),
                      "pqpool: observability::leak_detection: threshold is 0 ms; it must be at least 1 ms "
                      "(milliseconds::max() means no limit)");
}

TEST_CASE("leak_detection: threshold milliseconds::max() means no limit: nothing overflows, nothing is reported",
          "[observability][leak][numbers]") {
    lease_recorder r;
    auto s = std::make_shared<fake_server>();
    auto pool = make_leak_pool(s, r, std::chrono::milliseconds::max()); // UBSan: no signed overflow on the way
    auto out = pool.acquire();
    manual_clock::advance(std::chrono::hours{24 * 365 * 100});
    auto other = pool.acquire();
    other.release();
    pool.maintain();
    out.release();
    CHECK(r.count(event::leak_suspected) == 0);
    CHECK(r.count(event::leak_returned) == 0);
    CHECK(r.count(event::acquired) == 2);
}

TEST_CASE("leak_detection: maintain() reports every overdue lease, a look on the pool's own calls at most 16, the "
          "rest at the next call",
          "[observability][leak]") {
    lease_recorder r;
    auto s = std::make_shared<fake_server>();
    auto pool = make_leak_pool(s, r, 1s, 128);
    std::vector<leak_pool::lease> leaked;
    for (int i = 0; i < 40; ++i) leaked.push_back(pool.acquire());
    manual_clock::advance(2s);
    pool.maintain();
    CHECK(r.count(event::leak_suspected) == 40);
    std::vector<std::uint64_t> ids;
    for (auto& e : r.of(event::leak_suspected)) ids.push_back(e.connection);
    std::sort(ids.begin(), ids.end());
    CHECK(std::adjacent_find(ids.begin(), ids.end()) == ids.end()); // each once

    r.clear();
    for (int i = 0; i < 40; ++i) leaked.push_back(pool.acquire()); // the first look of these: 16 at t = 2 s
    manual_clock::advance(2s);
    auto probe = pool.acquire(); // a look: 16 of the 40 overdue
    CHECK(r.count(event::leak_suspected) == 16);
    probe.release(); // the next call looks again at once: 16 more
    CHECK(r.count(event::leak_suspected) == 32);
    (void)pool.try_acquire(); // 8 more; (its return looks again: none left)
    CHECK(r.count(event::leak_suspected) == 40);
    pool.maintain();
    CHECK(r.count(event::leak_suspected) == 40);
}

namespace {
// A sink that, at its first leak report, stops until told to go on (a sink
// writing to a slow log), so that a test can destroy the pool meanwhile.
struct stalling_leak_sink {
    static inline std::atomic<bool> entered{false}, go{false};
    template <class H>
    void operator()(const event_info<H>& e) const noexcept {
        if (e.kind != event::leak_suspected || entered.exchange(true)) return;
        while (!go) std::this_thread::sleep_for(1ms);
    }
};
} // namespace

TEMPLATE_TEST_CASE("leak_detection: the pool destroyed while acquire_for() or try_acquire() reports a leak: the "
                   "caller gets closed_error, nothing is freed under it",
                   "[observability][leak][destroy]", std::true_type, std::false_type) {
    constexpr bool waits = TestType::value; // acquire_for, or try_acquire
    stalling_leak_sink::entered = false;
    stalling_leak_sink::go = false;
    using obs = combine<observability::leak_detection, sink<stalling_leak_sink>>;
    using p = null_pool<overflow::fixed, obs>;
    auto s = std::make_shared<fake_server>();
    auto pool = std::make_unique<p>(fake_connector<>{s}, overflow::fixed{.size = 2},
                                    obs{observability::leak_detection{.threshold = 1ms}});
    auto held = pool->acquire();
    std::this_thread::sleep_for(5ms); // overdue; the next acquire looks and reports it
    std::atomic<int> outcome{0};      // 1: closed_error
    std::thread t([&] {
        try {
            if constexpr (waits)
                (void)pool->acquire_for(1s);
            else
                (void)pool->try_acquire();
            outcome = 2;
        } catch (const closed_error&) {
            outcome = 1;
        } catch (...) {
            outcome = 3;
        }
    });
    while (!stalling_leak_sink::entered) std::this_thread::sleep_for(1ms);
    held.release(); // no lease out: nothing but that thread keeps the pool's internals alive
    pool.reset();   // while it is inside the acquire, in the sink (ASan: no use after free)
    stalling_leak_sink::go = true;
    t.join();
    CHECK(outcome == 1);
    CHECK(s->open() == 0);
}

TEST_CASE("leak_detection under threads: every lease is unlinked, every overdue one reported once",
          "[observability][leak]") {
    lease_recorder r;
    auto s = std::make_shared<fake_server>();
    using obs = combine<observability::leak_detection, sink<lease_recorder>>;
    null_pool<overflow::fixed, obs> pool{fake_connector<>{s}, overflow::fixed{.size = 4},
                                         obs{observability::leak_detection{.threshold = 1ms}, sink<lease_recorder>{r}}};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < 200; ++i) {
                auto l = pool.acquire();
                if (i % 50 == 0) std::this_thread::sleep_for(3ms); // overdue
                if (i % 10 == 0) pool.maintain();
            }
        });
    for (auto& t : threads) t.join();
    pool.maintain();
    CHECK(r.count(event::acquired) == 800);
    CHECK(r.count(event::returned) == 800);
    // Each suspected lease was reported once and came back once.
    CHECK(r.count(event::leak_suspected) == r.count(event::leak_returned));
    CHECK(r.count(event::leak_suspected) <= 800);
}

// --- logfmt

TEST_CASE("logfmt_writer: one line per event, values quoted and escaped", "[observability][logfmt]") {
    event_info<fake_connection*> e;
    e.kind = event::connect_failed;
    e.error = "pqpool: cannot connect: FATAL: \"x\" = y\nsecond line\\";
    e.sqlstate = "28P01";
    e.connect_time = std::chrono::microseconds{41203};
    const auto at = std::chrono::system_clock::time_point{std::chrono::milliseconds{1'700'000'000'123}};
    CHECK(observability::logfmt_writer::format(e, "main", at) ==
          "time=2023-11-14T22:13:20.123Z level=warn pool=main event=connect_failed connect_ms=41.203 sqlstate=28P01 "
          "transient=false error=\"pqpool: cannot connect: FATAL: \\\"x\\\" = y\\nsecond line\\\\\"");
    event_info<fake_connection*> r;
    r.kind = event::retired;
    r.connection = 3;
    r.uses = 40;
    r.reason = close_reason::lifetime;
    r.age = std::chrono::milliseconds{1500};
    CHECK(observability::logfmt_writer::format(r, "", at) ==
          "time=2023-11-14T22:13:20.123Z level=info event=retired conn=3 uses=40 reason=lifetime age_ms=1500.000");
}

TEST_CASE("logfmt_writer in a pool: a line per rare event, and lines from threads never interleave",
          "[observability][logfmt]") {
    std::ostringstream out;
    auto s = std::make_shared<fake_server>();
    using log_sink = sink<observability::logfmt_writer>;
    null_pool<overflow::fixed, log_sink> pool{fake_connector<>{s}, overflow::fixed{.size = 4},
                                              log_sink{observability::logfmt_writer{out, "unit"}}};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < 100; ++i) pool.acquire().mark_broken(); // a connect and a close each
        });
    for (auto& t : threads) t.join();
    std::istringstream in(out.str());
    std::string line;
    int connected = 0, retired = 0, lines = 0;
    while (std::getline(in, line)) {
        ++lines;
        INFO(line);
        CHECK(line.rfind("time=", 0) == 0);
        CHECK(line.find(" pool=unit event=") != std::string::npos);
        connected += line.find("event=connected conn=") != std::string::npos;
        retired += line.find("event=retired conn=") != std::string::npos &&
                   line.find(" reason=broken age_ms=") != std::string::npos;
    }
    CHECK(lines == 800);
    CHECK(connected == 400);
    CHECK(retired == 400);
}

// --- TLS facts' dates (the facts of a real connection: tests/integration)

namespace {
std::optional<std::chrono::sys_seconds> asn1_time(const char* text) {
    ASN1_TIME* t = ASN1_TIME_new();
    REQUIRE(t != nullptr);
    const bool set = ASN1_TIME_set_string(t, text) == 1;
    const auto out = detail::asn1_time_point(t);
    ASN1_TIME_free(t);
    REQUIRE(set);
    return out;
}
} // namespace

TEST_CASE("TLS facts: a certificate's notAfter to the second, up to 9999-12-31 (no well-defined expiration date)",
          "[observability][tls][numbers]") {
    using namespace std::chrono;
    CHECK(asn1_time("20231114221320Z")->time_since_epoch() == seconds{1'700'000'000});
    CHECK(asn1_time("491231235959Z") == sys_days{2049y / 12 / 31} + 86399s); // UTCTime: 49 is 2049
    CHECK(asn1_time("500101000000Z") == sys_days{1950y / 1 / 1});            // ... and 50 is 1950
    const auto never = asn1_time("99991231235959Z");
    REQUIRE(never);
    CHECK(*never == sys_days{9999y / 12 / 31} + 86399s); // past system_clock's nanoseconds (2262)
    tls_facts f;
    f.certificate_not_after = never;
    const auto now = sys_days{2026y / 12 / 6};
    REQUIRE(f.certificate_expires_in(now));
    CHECK(*f.certificate_expires_in(now) == *never - now); // about 7,973 years: far in the future, not expired
    f.certificate_not_after = asn1_time("20261205000000Z");
    CHECK(*f.certificate_expires_in(now) == -days{1}); // expired yesterday: negative
}

// --- the exposition's text (promtool checks a real one: tests/integration)

TEST_CASE("prometheus exposition: stats, counters and histograms under OpenTelemetry's names",
          "[observability][prometheus]") {
    auto s = std::make_shared<fake_server>();
    using obs = combine<observability::counters, observability::histograms>;
    null_pool<overflow::bounded, obs> pool{fake_connector<>{s},
                                           overflow::bounded{.size = 2, .max_overflow = 3, .wait = 1ms}};
    auto held = pool.acquire();
    (void)pool.acquire();
    null_pool<overflow::fixed> other{fake_connector<>{s}, overflow::fixed{.size = 1}};
    const std::string text = prometheus_exposition().add(pool, "main \"db\"\n").add(other, "other").str();
    INFO(text);
    const std::string main_label = "db_client_connection_pool_name=\"main \\\"db\\\"\\n\"";
    auto has = [&](const std::string& line) { return text.find(line + "\n") != std::string::npos; };
    CHECK(has("# TYPE db_client_connection_count untyped"));
    CHECK(has("db_client_connection_count{" + main_label + ",db_client_connection_state=\"idle\"} 1"));
    CHECK(has("db_client_connection_count{" + main_label + ",db_client_connection_state=\"used\"} 1"));
    CHECK(has(
        "db_client_connection_count{db_client_connection_pool_name=\"other\",db_client_connection_state=\"idle\"} 0"));
    CHECK(has("db_client_connection_idle_max{" + main_label + "} 2"));
    CHECK(has("db_client_connection_max{" + main_label + "} 5"));
    CHECK(has("db_client_connection_idle_min{" + main_label + "} 0"));
    CHECK(has("db_client_connection_pending_requests{" + main_label + "} 0"));
    CHECK(has("db_client_connection_timeouts_total{" + main_label + "} 0"));
    CHECK(has("pqpool_events_total{" + main_label + ",event=\"connected\"} 2"));
    CHECK(has("pqpool_events_total{" + main_label + ",event=\"acquired\"} 2"));
    CHECK(has("pqpool_connections_closed_total{" + main_label + ",reason=\"lifetime\"} 0"));
    CHECK(has("db_client_connection_use_time_seconds_count{" + main_label + "} 1"));
    CHECK(has("db_client_connection_wait_time_seconds_count{" + main_label + "} 2"));
    CHECK(has("db_client_connection_create_time_seconds_bucket{" + main_label + ",le=\"+Inf\"} 2"));
    CHECK(has("db_client_connection_create_time_seconds_bucket{" + main_label + ",le=\"1.28e-07\"} 0"));
    // One HELP and TYPE per metric, however many pools; the pool without counters has no timeouts series.
    std::size_t helps = 0;
    for (std::size_t at = 0; (at = text.find("# TYPE db_client_connection_count ", at)) != std::string::npos; ++at)
        ++helps;
    CHECK(helps == 1);
    CHECK(text.find("db_client_connection_timeouts_total{db_client_connection_pool_name=\"other\"}") ==
          std::string::npos);
    // Buckets are cumulative.
    std::uint64_t last = 0;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        if (line.rfind("db_client_connection_wait_time_seconds_bucket{", 0) != 0) continue;
        const std::uint64_t v = std::stoull(line.substr(line.rfind(' ') + 1));
        CHECK(v >= last);
        last = v;
    }
    CHECK(last == 2);
}

TEST_CASE("prometheus exposition: a pool name that is not UTF-8 gets U+FFFD for each stray byte, and UTF-8 is kept",
          "[observability][prometheus]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed> pool{fake_connector<>{s}, overflow::fixed{.size = 3}};
    const auto max_line = [&](const std::string& name) {
        const std::string text = prometheus_exposition().add(pool, name).str();
        const std::string head = "db_client_connection_max{db_client_connection_pool_name=\"";
        const auto at = text.find(head);
        REQUIRE(at != std::string::npos);
        const auto end = text.find("\"} 3\n", at);
        REQUIRE(end != std::string::npos);
        return text.substr(at + head.size(), end - at - head.size());
    };
    const std::string fffd = "\xEF\xBF\xBD";
    CHECK(max_line("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x90\x98") ==
          "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x90\x98"); // é € 🐘
    CHECK(max_line("caf\xE9-latin1") == "caf" + fffd + "-latin1");
    CHECK(max_line("a\xFF\xFE"
                   "b") == "a" + fffd + fffd + "b");
    CHECK(max_line("\xC0\xAF") == fffd + fffd);                       // an overlong '/'
    CHECK(max_line("\xED\xA0\x80") == fffd + fffd + fffd);            // a surrogate (U+D800)
    CHECK(max_line("\xF4\x90\x80\x80") == fffd + fffd + fffd + fffd); // above U+10FFFF
    CHECK(max_line("cut \xE2\x82") == "cut " + fffd + fffd);          // a sequence cut short at the end
    CHECK(max_line("q\"\\\n\xE9") == "q\\\"\\\\\\n" + fffd);          // escapes still apply
}

TEST_CASE("docs/observability.md's first snippet compiles and runs without a server", "[observability]") {
    std::ostringstream out;
    namespace obs = pqpool::observability;
    using metrics =
        obs::combine<obs::counters, obs::histograms, obs::leak_detection, obs::tls, obs::sink<obs::logfmt_writer>>;
    pqpool::pool<metrics> pool{"host=db sslmode=require",
                               metrics{obs::counters{}, obs::histograms{}, obs::leak_detection{.threshold = 30s},
                                       obs::tls{}, obs::sink<obs::logfmt_writer>{obs::logfmt_writer{out, "main"}}}};
    auto p99 = pool.observer().get<obs::histograms>().wait().percentile(0.99); // acquire wait
    pqpool::write_prometheus(out, pool, "main");
    CHECK(p99 == std::chrono::nanoseconds{0});
    CHECK(pool.observer().leak_threshold() == 30s);
    CHECK(out.str().find("db_client_connection_max{db_client_connection_pool_name=\"main\"} 15\n") !=
          std::string::npos);
}
