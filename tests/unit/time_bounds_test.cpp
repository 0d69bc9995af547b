// The bound of every wait: acquire() and acquire_for(d) return or throw
// within their wait plus a small margin, whatever validation, connects and
// retries happen inside; a connect cut short by a caller's wait is kept for
// the next caller, so short waits still warm a pool up. Real time, against
// the fake connector's slow pings and slow connects.

#include "catch.hpp"
#include "test_pool.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <optional>
#include <thread>
#include <vector>

using namespace pqpool;
using namespace pqpool::test;

namespace {

using steady = std::chrono::steady_clock;

// The README documents "a few milliseconds" of margin on an idle machine. The
// tests allow more, because the machines that run them are shared and the
// sanitizers slow them down; a broken bound (a ping or connect that takes its
// own full timeout) overshoots by seconds and still fails.
constexpr auto margin = 250ms;

template <class F>
std::chrono::milliseconds time_of(F f) {
    const auto start = steady::now();
    f();
    return std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - start);
}

} // namespace

TEST_CASE("acquire_for keeps its wait while every idle connection's ping hangs and connects are slow",
          "[time_bounds]") {
    auto s = std::make_shared<fake_server>();
    using p = fake_pool<validation::ping, recycling::none, retry::exponential_backoff, fork_safety::none,
                        overflow::bounded, observability::counters>;
    p pool{fake_connector<>{s}, overflow::bounded{.size = 3, .max_overflow = 0, .wait = 2s},
           validation::ping{.timeout = 5s}};
    {
        auto a = pool.acquire(), b = pool.acquire(), c = pool.acquire();
    }
    // A frozen path: every idle connection's ping would take 2 s, every connect 3 s.
    for (int i = 0; i < 3; ++i) s->connection(i).silently_dead = true;
    s->ping_delay = 2s;
    s->connect_delay = 3s;
    for (const auto wait : {0ms, 1ms, 100ms, 300ms}) {
        CAPTURE(wait.count());
        const auto took = time_of([&] { CHECK_THROWS_AS(pool.acquire_for(wait), error); });
        CHECK(took < wait + margin);
    }
    const pool_stats st = pool.stats();
    CHECK(st.size == st.idle + st.in_use + st.opening);
    CHECK(st.in_use == 0);
    CHECK(st.waiting == 0);
}

TEST_CASE("acquire() keeps the overflow policy's wait, the default policies' round trips included", "[time_bounds]") {
    auto s = std::make_shared<fake_server>();
    using p = fake_pool<>; // ping_if_idle, limits, bounded, backoff, detect, mutex
    p pool{fake_connector<>{s}, overflow::bounded{.size = 3, .max_overflow = 2, .wait = 400ms},
           validation::ping_if_idle{.idle_for = 0ms, .timeout = 5s}};
    {
        auto a = pool.acquire(), b = pool.acquire(), c = pool.acquire();
    }
    for (int i = 0; i < 3; ++i) s->connection(i).silently_dead = true;
    s->ping_delay = 5s;
    s->connect_delay = 10s;
    std::this_thread::sleep_for(20ms); // idle for longer than idle_for, whatever the coarse clock's tick
    const auto took = time_of([&] { CHECK_THROWS_AS(pool.acquire(), timeout_error); });
    CHECK(took < 400ms + margin);
}

TEST_CASE("a connect cut short by a caller's wait is kept: the next callers go on with it", "[time_bounds]") {
    auto s = std::make_shared<fake_server>();
    s->connect_delay = 300ms;
    null_pool<overflow::fixed> pool{fake_connector<>{s}, overflow::fixed{.size = 1, .wait = 50ms}};
    const auto took = time_of([&] {
        // A server that has not answered yet is not a failure, but the message says so.
        CHECK_THROWS_WITH(pool.acquire_for(50ms), Catch::Contains("its connect has had no answer for"));
    });
    CHECK(took < 50ms + margin);
    CHECK(pool.stats() == pool_stats{.size = 1, .opening = 1}); // parked, counted
    std::optional<null_pool<overflow::fixed>::lease> got;
    for (int i = 0; i < 100 && !got; ++i) {
        try {
            got = pool.acquire_for(50ms);
        } catch (const timeout_error&) {
        }
    }
    REQUIRE(got);
    CHECK(s->started == 1); // one handshake, driven by several callers
    CHECK(s->cancelled == 0);
}

TEST_CASE("a pool whose callers all wait 0 or 1 ms still warms up", "[time_bounds]") {
    auto s = std::make_shared<fake_server>();
    s->connect_delay = 20ms;
    null_pool<overflow::fixed> pool{fake_connector<>{s}, overflow::fixed{.size = 2, .wait = 1ms}};
    int tries = 0;
    bool got = false;
    for (; tries < 2000 && !got; ++tries) {
        try {
            auto l = pool.acquire_for(tries % 2 ? 1ms : 0ms);
            got = true;
        } catch (const error&) {
            std::this_thread::sleep_for(1ms); // a caller that comes back a little later
        }
    }
    CHECK(got);
    CHECK(s->started == 1);
    CHECK(s->connects == 1);
}

TEST_CASE("maintain() warms up a pool whose callers never wait", "[time_bounds]") {
    auto s = std::make_shared<fake_server>();
    s->connect_delay = 30ms;
    using p = fake_pool<validation::none, recycling::limits, retry::none, fork_safety::none, overflow::fixed>;
    p pool{fake_connector<>{s}, overflow::fixed{.size = 3, .wait = 0ms},
           recycling::limits{.max_lifetime = 0ms, .min_idle = 2}};
    CHECK_THROWS_AS(pool.acquire_for(0ms), timeout_error); // starts a connect, cannot wait for it
    const auto report = pool.maintain();
    CHECK(report.opened == 2);
    CHECK(s->started == 2); // the parked connect was finished, not thrown away
    auto l = pool.acquire_for(0ms);
    CHECK(l);
}

TEST_CASE("a caller whose connect fails keeps waiting for a connection others return", "[time_bounds][retry]") {
    auto s = std::make_shared<fake_server>();
    using p = fake_pool<validation::none, recycling::none, retry::exponential_backoff, fork_safety::none,
                        overflow::fixed>;
    p pool{fake_connector<>{s}, overflow::fixed{.size = 5, .wait = 5s},
           retry::exponential_backoff{.attempts = 2, .base = 1ms, .cap = 2ms}};
    {
        std::vector<p::lease> warm;
        for (int i = 0; i < 4; ++i) warm.push_back(pool.acquire());
    }
    s->fail_next({fault::transient, "53300"}, 1000000); // the server is at max_connections
    std::atomic<bool> stop{false};
    std::vector<std::thread> holders;
    for (int i = 0; i < 4; ++i)
        holders.emplace_back([&] {
            while (!stop) {
                auto l = pool.acquire();
                std::this_thread::sleep_for(50ms);
            }
        });
    for (;;) { // every holder holds one: the next acquire has to connect
        const pool_stats st = pool.stats();
        if (st.in_use == 4 && st.idle == 0) break;
        std::this_thread::yield();
    }
    int before;
    {
        std::lock_guard lock(s->m);
        before = s->attempts;
    }
    int served = 0, failed = 0;
    for (int i = 0; i < 5; ++i) {
        try {
            auto l = pool.acquire_for(3s);
            ++served;
        } catch (const connect_error&) {
            ++failed;
        }
    }
    stop = true;
    for (auto& h : holders) h.join();
    CHECK(s->attempts > before); // the failing connects were really tried
    CHECK(failed == 0);
    CHECK(served == 5);
}

TEST_CASE("a caller whose connect failed is not stranded once no connection can come back", "[time_bounds][retry]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed> pool{fake_connector<>{s}, overflow::fixed{.size = 2, .wait = 30s}};
    auto a = pool.acquire();
    s->fail_next({fault::transient, "08006"}); // one failed connect: the server blipped
    std::string outcome;
    std::thread b([&] {
        try {
            auto l = pool.acquire_for(3s);
            outcome = "a lease";
        } catch (const error& e) {
            outcome = e.what();
        }
    });
    while (pool.stats().waiting == 0) std::this_thread::yield(); // B's connect failed: it waits for A's
    s->kill(a.get());
    a.mark_broken();
    a.release(); // closed, not returned: nothing is in use any more and a slot is free
    const auto t0 = steady::now();
    b.join();
    INFO(outcome);
    CHECK(steady::now() - t0 < margin); // it connects again now, not 3 s later
    CHECK(outcome == "a lease");
}

TEST_CASE("a later caller does not start a connect ahead of a waiter whose connect failed", "[time_bounds][retry]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed> pool{fake_connector<>{s}, overflow::fixed{.size = 2, .wait = 30s}};
    auto a = pool.acquire();
    s->fail_next({fault::transient, "08006"});
    std::mutex m;
    std::vector<char> order;
    auto record = [&](char who) {
        std::lock_guard lock(m);
        order.push_back(who);
    };
    std::thread b([&] {
        try {
            auto l = pool.acquire_for(2s);
            record('B');
        } catch (const error&) {
            record('b');
        }
    });
    while (pool.stats().waiting == 0) std::this_thread::yield();
    std::thread c([&] {
        try {
            auto l = pool.acquire_for(2s); // came after B: FIFO says B first
            record('C');
        } catch (const error&) {
            record('c');
        }
    });
    while (pool.stats().waiting < 2) std::this_thread::yield();
    std::this_thread::sleep_for(50ms);
    // A slot is free, but B's connect failed and a connection is out that will come back: C,
    // behind B, must not start a connect ahead of it (nor hammer a failing server).
    CHECK(s->started == 2);
    CHECK(pool.stats().opening == 0);
    a.release(); // returned: B gets it
    b.join();
    c.join();
    // Both served (the order they record in is a race: C may connect while B returns to its caller).
    CHECK(std::count(order.begin(), order.end(), 'B') == 1);
    CHECK(std::count(order.begin(), order.end(), 'C') == 1);
}

TEST_CASE("a caller backing off a failed connect takes a connection that went idle meanwhile",
          "[time_bounds][retry]") {
    auto s = std::make_shared<fake_server>();
    using p = fake_pool<validation::none, recycling::none, fixed_delay, fork_safety::none, overflow::fixed>;
    p pool{fake_connector<>{s}, overflow::fixed{.size = 2, .wait = 5s}, fixed_delay{.delay = 1500ms}};
    auto a = pool.acquire();
    s->connect_delay = 200ms;
    s->fail_next({fault::transient, "08006"}); // C's connect fails after 200 ms, then backs off 1.5 s
    std::thread c([&] { auto l = pool.acquire_for(5s); });
    while (s->started < 2) std::this_thread::yield();
    a.release(); // nobody waits yet: connection 0 goes idle while C connects
    std::this_thread::sleep_for(400ms); // C's connect has failed: it takes the idle one rather than back off
    const pool_stats st = pool.stats();
    CHECK_FALSE((st.idle > 0 && st.waiting > 0)); // never a caller in line while a connection is idle
    c.join();
    CHECK(s->connects == 1); // nobody needed a second connection
}

TEST_CASE("a caller whose connect backs off stays ahead of later callers", "[time_bounds][overflow]") {
    auto s = std::make_shared<fake_server>();
    using p = fake_pool<validation::none, recycling::none, fixed_delay, fork_safety::none, overflow::fixed>;
    p pool{fake_connector<>{s}, overflow::fixed{.size = 2, .wait = 5s}, fixed_delay{.delay = 1s}};
    auto a = pool.acquire();
    s->connect_delay = 100ms;
    s->fail_next({fault::transient, "08006"});
    std::mutex m;
    std::vector<char> order;
    auto record = [&](char who) {
        std::lock_guard lock(m);
        order.push_back(who);
    };
    std::thread c([&] {
        auto l = pool.acquire(); // gets the free slot; its connect fails after 100 ms, then backs off 1 s
        record('C');
    });
    while (s->started < 2) std::this_thread::yield();
    std::thread w([&] {
        auto l = pool.acquire(); // no slot left: waits in line, behind C's connect
        record('W');
    });
    while (pool.stats().waiting < 2) std::this_thread::yield(); // W waits; C backs off, in line
    a.release(); // one connection comes back: C was served first, so C gets it
    c.join();
    w.join();
    CHECK(order == std::vector<char>{'C', 'W'});
}

TEST_CASE("no connect starts after close()", "[time_bounds][lifetime]") {
    int started_after_close = 0;
    for (int round = 0; round < 20; ++round) {
        auto s = std::make_shared<fake_server>();
        null_pool<overflow::fixed> pool{fake_connector<>{s}, overflow::fixed{.size = 1, .wait = 5s}};
        auto held = pool.acquire();
        std::thread w([&] {
            try {
                auto l = pool.acquire();
            } catch (const closed_error&) {
            }
        });
        while (pool.stats().waiting == 0) std::this_thread::yield();
        s->kill(held.get());
        held.mark_broken();
        held.release(); // the slot is free: the waiter is served a fresh permit...
        pool.close();   // ...and the pool is closed before it wakes
        const int before = s->started;
        w.join();
        started_after_close += s->started - before;
    }
    CHECK(started_after_close == 0);
}

TEST_CASE("single_thread: a failed connect is reported as such, not as exhausted", "[time_bounds][concurrency]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed, concurrency::single_thread> pool{fake_connector<>{s},
                                                                overflow::fixed{.size = 2, .wait = 1s}};
    auto a = pool.acquire();
    s->fail_next({fault::permanent, "28P01"});
    CHECK_THROWS_AS(pool.acquire(), connect_error);
}

TEST_CASE("with no connection that could come back, a failed connect is the caller's error at once",
          "[time_bounds][retry]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed> pool{fake_connector<>{s}, overflow::fixed{.size = 5, .wait = 10s}};
    s->fail_next({fault::permanent, "28P01"});
    const auto took = time_of([&] { CHECK_THROWS_AS(pool.acquire(), connect_error); });
    CHECK(took < margin); // not the 10 s wait
}

TEST_CASE("validation round trips get only the time the acquire has left", "[time_bounds][validation]") {
    auto s = std::make_shared<fake_server>();
    using p = fake_pool<validation::ping, recycling::none, retry::none, fork_safety::none, overflow::fixed>;
    p pool{fake_connector<>{s}, overflow::fixed{.size = 1, .wait = 5s},
           validation::ping{.timeout = std::chrono::milliseconds::max()}};
    { auto warm = pool.acquire(); }
    s->ping_delay = 3s;   // alive, but slow to answer
    s->connect_delay = 3s; // and a replacement would be slow too
    const auto took = time_of([&] { CHECK_THROWS_AS(pool.acquire_for(200ms), timeout_error); });
    CHECK(took < 200ms + margin);
    CHECK(s->pings == 1);
}

TEST_CASE("a ping timeout of milliseconds::max() means no limit of its own, not 'fail every ping'",
          "[time_bounds][validation]") {
    auto s = std::make_shared<fake_server>();
    using p = fake_pool<validation::ping, recycling::none, retry::none, fork_safety::none, overflow::fixed>;
    p pool{fake_connector<>{s}, overflow::fixed{.size = 1, .wait = 5s},
           validation::ping{.timeout = std::chrono::milliseconds::max()}};
    { auto warm = pool.acquire(); }
    s->ping_delay = 20ms;
    { auto again = pool.acquire(); }
    CHECK(s->pings == 1);
    CHECK(s->connects == 1); // the ping succeeded: the connection was reused
}
