// Overflow, waiting and concurrency under load, against the fake connector:
// no barging past the waiters, no caller held up by another's slow connect,
// no slot lost to a failed connect. Bounded in iterations; no test sleeps to
// "let things happen": order is established with counts and flags.

#include "catch.hpp"
#include "test_pool.hpp"

#include <atomic>
#include <future>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <vector>

using namespace pqpool;
using namespace pqpool::test;

namespace {

using fixed_pool = null_pool<overflow::fixed>;

// Starts `n` threads that each acquire once, in a known arrival order: thread i
// is queued before thread i + 1 starts. Each records its index while it holds
// the connection, then runs `then` (still holding it). A failed acquire is
// recorded as -1.
template <class Pool, class Then>
std::vector<std::thread> queue_waiters(Pool& pool, int n, std::mutex& m, std::vector<int>& order, Then then) {
    std::vector<std::thread> waiters;
    const std::size_t already = pool.stats().waiting;
    for (int i = 0; i < n; ++i) {
        waiters.emplace_back([&pool, &m, &order, then, i] {
            try {
                auto l = pool.acquire();
                {
                    std::lock_guard lock(m);
                    order.push_back(i);
                }
                then(i);
            } catch (...) {
                std::lock_guard lock(m);
                order.push_back(-1);
            }
        });
        while (pool.stats().waiting != already + static_cast<std::size_t>(i + 1)) std::this_thread::yield();
    }
    return waiters;
}

std::vector<int> iota(int n) {
    std::vector<int> v;
    for (int i = 0; i < n; ++i) v.push_back(i);
    return v;
}

} // namespace

TEST_CASE("no barging: a holder that re-acquires right after releasing queues behind the 8 waiters",
          "[stress][overflow]") {
    auto s = std::make_shared<fake_server>();
    fixed_pool pool{fake_connector<>{s}, overflow::fixed{.size = 1, .wait = 30s}};
    constexpr int n = 8;

    SECTION("a blocking re-acquire is served last") {
        for (int round = 0; round < 10; ++round) {
            auto held = pool.acquire();
            std::mutex m;
            std::vector<int> order;
            auto waiters = queue_waiters(pool, n, m, order, [](int) {});
            held.release();
            held = pool.acquire(); // the barging attempt: straight back in, before waiter 0 has even woken
            std::vector<int> served_before_barger;
            {
                std::lock_guard lock(m);
                served_before_barger = order;
            }
            held.release(); // before joining: a pool that let the barger in must fail here, not hang
            for (auto& w : waiters) w.join();
            CHECK(served_before_barger == iota(n)); // every waiter, in arrival order, before the barger
            CHECK(order == iota(n));
            CHECK(pool.stats() ==
                  pool_stats{.size = 1, .idle = 1, .in_use = 0, .opening = 0, .overflow = 0, .waiting = 0});
        }
    }

    SECTION("try_acquire right after releasing gets nothing: the connection went to the first waiter") {
        auto held = pool.acquire();
        std::mutex m;
        std::vector<int> order;
        std::promise<void> checked;
        std::shared_future<void> gate = checked.get_future().share();
        // Waiter 0 keeps the connection until the barger has tried, so the
        // outcome does not depend on how fast waiter 0 wakes up.
        auto waiters = queue_waiters(pool, n, m, order, [gate](int i) {
            if (i == 0) gate.wait();
        });
        held.release();
        const bool barged = pool.try_acquire().has_value();
        checked.set_value();
        CHECK_FALSE(barged);
        auto again = pool.acquire(); // queued behind waiters 1..7
        std::vector<int> served_before_barger;
        {
            std::lock_guard lock(m);
            served_before_barger = order;
        }
        again.release();
        for (auto& w : waiters) w.join();
        CHECK(served_before_barger == iota(n));
    }

    CHECK(s->connects == 1); // one connection, passed hand to hand
    CHECK(s->misuse == 0);
}

TEST_CASE("a slow connect does not delay a caller that can take an idle connection", "[stress][pool]") {
    auto s = std::make_shared<fake_server>();
    fixed_pool pool{fake_connector<>{s}, overflow::fixed{.size = 2, .wait = 30s}};
    auto held = pool.acquire(); // opened fast; the slow connect comes next
    fake_connection* const idle_one = held.get();
    s->connect_delay = 1s; // set before the slow thread starts (thread creation orders it)

    std::atomic<bool> fast_done{false};
    std::atomic<bool> fast_done_before_slow_connect_returned{false};
    std::atomic<bool> slow_got_a_new_one{false};
    std::thread slow([&] {
        auto l = pool.acquire(); // nothing idle: opens a second connection, taking a second
        fast_done_before_slow_connect_returned = fast_done.load();
        slow_got_a_new_one = l.get() != idle_one;
    });
    while (pool.stats().opening != 1) std::this_thread::yield(); // the slow connect is under way
    held.release();                                              // one idle connection now

    constexpr int cycles = 50;
    int served_idle = 0;
    std::thread fast([&] {
        for (int i = 0; i < cycles; ++i) {
            auto l = pool.acquire();
            served_idle += l.get() == idle_one;
        }
        fast_done = true;
    });
    fast.join();
    const pool_stats during = pool.stats(); // the pool's lock is free while connecting, too
    slow.join();

    CHECK(served_idle == cycles);
    CHECK(fast_done_before_slow_connect_returned);
    CHECK(slow_got_a_new_one);
    CHECK(during.opening == 1);
    CHECK(during.in_use == 0);
    CHECK(s->connects == 2);
    CHECK(pool.stats() == pool_stats{.size = 2, .idle = 2, .in_use = 0, .opening = 0, .overflow = 0, .waiting = 0});
}

TEST_CASE("failed connects release their reserved slots under concurrency", "[stress][pool]") {
    auto s = std::make_shared<fake_server>();
    using p = null_pool<overflow::fixed, observability::counters>;
    p pool{fake_connector<>{s}, overflow::fixed{.size = 2, .wait = 10s}};
    constexpr int threads = 16, cycles = 200;

    fault failing{fault::transient, "08006"};
    SECTION("a transient connect_error") {}
    SECTION("an exception that is no connect_error") { failing = fault{fault::other, ""}; }
    // Every other connect attempt fails.
    for (int i = 0; i < threads * cycles; ++i) {
        s->fail_next(i % 2 == 0 ? failing : fault{});
    }

    std::atomic<int> ok{0}, connect_failed{0}, other_failed{0}, unexpected{0};
    std::atomic<bool> stop{false};
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t)
        workers.emplace_back([&, t] {
            for (int i = 0; i < cycles && !stop; ++i) {
                try {
                    auto l = pool.acquire();
                    if (l.get()->closed) ++unexpected;
                    ++ok;
                    // Close one connection in three so that connects keep happening.
                    if ((i + t) % 3 == 0) l.mark_broken();
                } catch (const connect_error& e) {
                    e.transient() ? ++connect_failed : ++unexpected;
                } catch (const timeout_error&) {
                    ++unexpected; // a slot was lost: give up rather than wait out every timeout
                    stop = true;
                } catch (const std::runtime_error& e) {
                    (std::string(e.what()) == "fake: connector threw something else" ? other_failed : unexpected)++;
                }
            }
        });
    for (auto& w : workers) w.join();

    CHECK(unexpected == 0);
    CHECK(ok + connect_failed + other_failed == threads * cycles);
    CHECK(ok > 0);
    CHECK(connect_failed + other_failed > 0);
    const pool_stats st = pool.stats();
    CHECK(st.in_use == 0);
    CHECK(st.waiting == 0);
    CHECK(st.opening == 0);
    CHECK(st.size <= 2);
    CHECK(static_cast<int>(st.size) == s->open());
    CHECK(s->misuse == 0);
    CHECK(s->connects - s->closes == s->open());
    if (failing.kind == fault::transient) {
        CHECK(pool.observer().count(event::connect_failed) == static_cast<std::size_t>(s->attempts - s->connects));
        CHECK(other_failed == 0);
    } else {
        CHECK(connect_failed == 0);
    }
}
