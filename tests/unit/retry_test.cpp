// Retry policies: which failures are retried, and the backoff's bounds.

#include "catch.hpp"
#include "test_pool.hpp"

#include <atomic>
#include <thread>
#include <vector>

using namespace pqpool;
using namespace pqpool::test;

namespace {
using backoff_pool = manual_pool<validation::none, recycling::none, retry::exponential_backoff, fork_safety::none,
                                 overflow::fixed, observability::counters>;
backoff_pool make(std::shared_ptr<fake_server> s, retry::exponential_backoff r) {
    return backoff_pool{fake_connector<manual_clock>{s}, overflow::fixed{.size = 1, .wait = 60s}, r};
}
} // namespace

TEST_CASE("exponential_backoff: each delay lies in [0, min(cap, base * 2^(n-1))]", "[retry]") {
    const retry::exponential_backoff r{.attempts = 10, .base = 100ms, .cap = 1s};
    CHECK(r.ceiling(1) == 100ms);
    CHECK(r.ceiling(2) == 200ms);
    CHECK(r.ceiling(4) == 800ms);
    CHECK(r.ceiling(5) == 1s);
    CHECK(r.ceiling(9) == 1s);
    for (unsigned n = 1; n < 10; ++n) {
        std::chrono::nanoseconds lo = std::chrono::hours{1}, hi{0};
        for (int i = 0; i < 2000; ++i) {
            const auto d = r.next_delay(n);
            REQUIRE(d);
            REQUIRE(*d >= 0ns);
            REQUIRE(*d <= r.ceiling(n));
            lo = std::min(lo, *d);
            hi = std::max(hi, *d);
        }
        // full jitter: the draws cover the whole range, down to near zero
        CHECK(lo < r.ceiling(n) / 10);
        CHECK(hi > r.ceiling(n) * 9 / 10);
    }
    CHECK_FALSE(r.next_delay(10)); // the attempts are used up
    CHECK_FALSE(retry::none{}.next_delay(1));
}

TEST_CASE("transient connect failures are retried with backoff, then succeed", "[retry]") {
    manual_clock::reset();
    auto s = std::make_shared<fake_server>();
    auto pool = make(s, {.attempts = 5, .base = 100ms, .cap = 1s});
    s->fail_next({fault::transient, "57P03"}, 3);
    auto l = pool.acquire();
    CHECK(l);
    CHECK(s->attempts == 4);
    CHECK(pool.observer().count(event::retry) == 3);
    CHECK(manual_clock::slept() <= 100ms + 200ms + 400ms);
}

TEST_CASE("retries stop after `attempts` with the last error", "[retry]") {
    manual_clock::reset();
    auto s = std::make_shared<fake_server>();
    auto pool = make(s, {.attempts = 3, .base = 10ms, .cap = 1s});
    s->fail_next({fault::transient, "08006"}, 10);
    try {
        (void)pool.acquire();
        FAIL("no error");
    } catch (const connect_error& e) {
        CHECK(e.sqlstate() == "08006");
        CHECK(e.transient());
    }
    CHECK(s->attempts == 3);
    CHECK(pool.stats().size == 0);
}

TEST_CASE("a permanent failure is not retried", "[retry]") {
    auto s = std::make_shared<fake_server>();
    auto pool = make(s, {});
    s->fail_next({fault::permanent, "28P01"}, 5);
    CHECK_THROWS_AS(pool.acquire(), connect_error);
    CHECK(s->attempts == 1);
}

TEST_CASE("retries never run past the acquire's deadline", "[retry]") {
    manual_clock::reset();
    auto s = std::make_shared<fake_server>();
    using fixed_pool = manual_pool<validation::none, recycling::none, fixed_delay, fork_safety::none, overflow::fixed,
                                   observability::counters>;
    fixed_pool pool{fake_connector<manual_clock>{s}, overflow::fixed{.size = 1, .wait = 1s},
                    fixed_delay{.delay = 10s, .attempts = 100}}; // the first backoff alone outlasts the wait
    s->fail_next({fault::transient, "08001"}, 100);
    try {
        (void)pool.acquire();
        FAIL("no error");
    } catch (const timeout_error& e) { // the wait ended during a backoff: the failure comes with the timeout
        REQUIRE(e.last_connect_error() != nullptr);
        CHECK(e.last_connect_error()->sqlstate() == "08001");
    }
    CHECK(manual_clock::slept() <= 1s);
    CHECK(s->attempts == 1);
    CHECK(pool.stats().opening == 1); // the chain is parked, not lost: the next caller goes on with it
}

TEST_CASE("retry::none makes one attempt", "[retry]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed> pool{fake_connector<>{s}};
    s->fail_next({fault::transient, "08006"}, 2);
    CHECK_THROWS_AS(pool.acquire(), connect_error);
    CHECK(s->attempts == 1);
}

TEST_CASE("no reconnect storm: connects in flight are bounded, waiters share the outcome", "[retry]") {
    auto s = std::make_shared<fake_server>();
    s->connect_delay = 5ms;                          // so that attempts overlap
    s->fail_next({fault::transient, "08001"}, 1000); // the server is unreachable
    using storm_pool = fake_pool<validation::none, recycling::none, retry::exponential_backoff, fork_safety::none,
                                 overflow::bounded, observability::counters>;
    storm_pool pool{fake_connector<>{s}, overflow::bounded{.size = 5, .max_overflow = 10, .wait = 30s},
                    retry::exponential_backoff{.attempts = 3, .base = 1ms, .cap = 2ms, .connecting = 2}};
    std::atomic<int> failed{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < 16; ++i)
        threads.emplace_back([&] {
            try {
                (void)pool.acquire();
            } catch (const connect_error& e) {
                if (e.sqlstate() == "08001") ++failed;
            }
        });
    for (auto& t : threads) t.join();
    CHECK(failed == 16);          // every caller fails with the server's error, none hangs
    CHECK(s->max_in_flight <= 2); // never one attempt per waiting thread
    CHECK(s->attempts < 16 * 3);  // far fewer than one retry budget per caller
    CHECK(pool.stats() == pool_stats{});
}

TEST_CASE("callers beyond max_connecting wait for a connection, then all succeed", "[retry]") {
    auto s = std::make_shared<fake_server>();
    s->connect_delay = 5ms;
    using p = fake_pool<validation::none, recycling::none, fork_safety::none, overflow::fixed>;
    p pool{fake_connector<>{s}, overflow::fixed{.size = 8, .wait = 30s}, retry::exponential_backoff{.connecting = 1}};
    std::atomic<int> ok{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < 8; ++i)
        threads.emplace_back([&] {
            auto l = pool.acquire();
            std::this_thread::sleep_for(20ms);
            ++ok;
        });
    for (auto& t : threads) t.join();
    CHECK(ok == 8);
    CHECK(s->max_in_flight == 1);
    CHECK(pool.stats().waiting == 0);
    CHECK(static_cast<int>(pool.stats().size) == s->open());
}

namespace {
using run_pool = manual_pool<validation::none, recycling::none, retry::exponential_backoff, fork_safety::none,
                             overflow::fixed, observability::counters>;
}

TEST_CASE("run() retries work whose connection was lost, on a fresh connection", "[retry][run]") {
    manual_clock::reset();
    auto s = std::make_shared<fake_server>();
    run_pool pool{fake_connector<manual_clock>{s}, overflow::fixed{.size = 1},
                  retry::exponential_backoff{.attempts = 5, .base = 10ms, .cap = 100ms}};
    int calls = 0;
    const int result = pool.run([&](fake_connection* c) {
        ++calls;
        if (calls < 3) {
            c->alive = false; // the server went away mid-work
            throw std::runtime_error("server closed the connection unexpectedly");
        }
        return c->id;
    });
    CHECK(calls == 3);
    CHECK(result == 2);             // the third connection
    CHECK(s->connection(0).closed); // lost connections are closed, not reused
    CHECK(pool.observer().count(event::retry) == 2);
    CHECK(pool.stats().in_use == 0);
}

TEST_CASE("run() never retries an error that is not a lost connection", "[retry][run]") {
    auto s = std::make_shared<fake_server>();
    run_pool pool{fake_connector<manual_clock>{s}, overflow::fixed{.size = 1}};
    int calls = 0;
    CHECK_THROWS_WITH(pool.run([&](fake_connection*) {
        ++calls;
        throw std::runtime_error("duplicate key value violates unique constraint");
    }),
                      "duplicate key value violates unique constraint");
    CHECK(calls == 1);
    CHECK(s->connects == 1);
    pool.run([&](fake_connection*) { ++calls; }); // void works, and the connection was kept
    CHECK(s->connects == 1);
}

TEST_CASE("run() gives up after the retry budget with the last outcome", "[retry][run]") {
    manual_clock::reset();
    auto s = std::make_shared<fake_server>();
    run_pool pool{fake_connector<manual_clock>{s}, overflow::fixed{.size = 1},
                  retry::exponential_backoff{.attempts = 3, .base = 10ms, .cap = 100ms}};
    int calls = 0;
    CHECK_THROWS_WITH(pool.run([&](fake_connection* c) {
        ++calls;
        c->alive = false;
        throw std::runtime_error("lost " + std::to_string(calls));
    }),
                      "lost 3");
    CHECK(calls == 3);
    // A lost connection reported through the result, not an exception: returned as is after the budget.
    calls = 0;
    const bool ok = pool.run([&](fake_connection* c) {
        ++calls;
        c->alive = false;
        return false;
    });
    CHECK_FALSE(ok);
    CHECK(calls == 3);
    CHECK(pool.stats().size == 0);
}

TEST_CASE("run() also retries getting its fresh connection while connects fail transiently", "[retry][run]") {
    manual_clock::reset();
    auto s = std::make_shared<fake_server>();
    run_pool pool{fake_connector<manual_clock>{s}, overflow::fixed{.size = 1},
                  retry::exponential_backoff{.attempts = 3, .base = 10ms, .cap = 100ms}};
    int calls = 0;
    const int v = pool.run([&](fake_connection* c) {
        if (++calls == 1) {
            s->kill(c);
            s->fail_next({fault::transient, "57P03"}, 3); // the server restarts: the next acquire's budget fails
            throw std::runtime_error("server closed the connection unexpectedly");
        }
        return c->id;
    });
    CHECK(calls == 2);
    CHECK(v == 1);
    CHECK(s->attempts == 5); // the first connect, three that failed, the one that served

    // A first acquire that fails is the caller's answer: one budget of connects, not one per run().
    {
        auto s2 = std::make_shared<fake_server>();
        run_pool down{fake_connector<manual_clock>{s2}, overflow::fixed{.size = 1},
                      retry::exponential_backoff{.attempts = 3, .base = 10ms, .cap = 100ms}};
        s2->fail_next({fault::transient, "57P03"}, 100);
        CHECK_THROWS_AS(down.run([](fake_connection*) {}), connect_error);
        CHECK(s2->attempts == 3);
    }

    // A permanent failure (a wrong password) is not retried by run().
    calls = 0;
    CHECK_THROWS_AS(pool.run([&](fake_connection* c) {
        if (++calls == 1) {
            s->kill(c);
            s->fail_next({fault::permanent, "28P01"}, 1);
            throw std::runtime_error("server closed the connection unexpectedly");
        }
    }),
                    connect_error);
    CHECK(calls == 1);
}

TEST_CASE("run() does not wait twice on a pool that is merely busy", "[retry][run]") {
    auto s = std::make_shared<fake_server>();
    using p = fake_pool<validation::none, recycling::none, fork_safety::none, overflow::fixed,
                        retry::exponential_backoff, observability::counters>;
    p pool{fake_connector<>{s}, overflow::fixed{.size = 1, .wait = 20ms},
           retry::exponential_backoff{.attempts = 5, .base = 1ms, .cap = 1ms}};
    auto held = pool.acquire();
    CHECK_THROWS_AS(pool.run([](fake_connection*) {}), timeout_error);
    CHECK(pool.observer().count(event::timeout) == 1); // one wait, not five
    CHECK(pool.observer().count(event::retry) == 0);
}
