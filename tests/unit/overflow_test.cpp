// Overflow policies: how many connections, and what happens when all are busy.

#include "catch.hpp"
#include "test_pool.hpp"

#include <atomic>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

using namespace pqpool;
using namespace pqpool::test;

TEST_CASE("overflow::bounded keeps `size`, closes overflow connections on return", "[overflow]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::bounded> pool{fake_connector<>{s},
                                      overflow::bounded{.size = 2, .max_overflow = 2, .wait = 20ms}};
    std::vector<null_pool<overflow::bounded>::lease> held;
    for (int i = 0; i < 4; ++i) held.push_back(pool.acquire());
    CHECK(pool.stats().overflow == 2);
    CHECK_THROWS_AS(pool.acquire(), timeout_error);
    held.clear();
    CHECK(pool.stats() == pool_stats{.size = 2, .idle = 2, .in_use = 0, .opening = 0, .overflow = 0, .waiting = 0});
    CHECK(s->open() == 2);
}

TEST_CASE("overflow::fixed waits, overflow::fail_fast does not", "[overflow]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fail_fast> ff{fake_connector<>{s}, overflow::fail_fast{.size = 1}};
    auto held = ff.acquire();
    try {
        (void)ff.acquire();
        FAIL("fail_fast waited");
    } catch (const exhausted_error& e) {
        CHECK_THAT(e.what(), Catch::Contains("does not wait"));
        CHECK(e.stats().in_use == 1);
    }
}

TEST_CASE("overflow::pass_through opens per acquire and closes per release", "[overflow]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::pass_through> pool{fake_connector<>{s}};
    for (int i = 0; i < 3; ++i) {
        auto l = pool.acquire();
        CHECK(s->open() == 1);
    }
    CHECK(s->connects == 3);
    CHECK(s->open() == 0);
    CHECK(pool.stats().size == 0);
}

TEST_CASE("overflow::pass_through honours max_open", "[overflow]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::pass_through> pool{fake_connector<>{s}, overflow::pass_through{.max_open = 1, .wait = 10ms}};
    auto l = pool.acquire();
    CHECK_THROWS_AS(pool.acquire(), timeout_error);
}

TEST_CASE("a bounded waiter queue refuses the caller beyond it at once", "[overflow]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed> pool{fake_connector<>{s}, overflow::fixed{.size = 1, .wait = 10s, .waiters = 1}};
    auto held = pool.acquire();
    std::thread waiter([&] { auto l = pool.acquire(); });
    while (pool.stats().waiting == 0) std::this_thread::yield();
    CHECK_THROWS_WITH(pool.acquire(), Catch::Contains("waiter queue is full"));
    held.release();
    waiter.join();
}

TEST_CASE("waiters are served first come, first served", "[overflow]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed> pool{fake_connector<>{s}, overflow::fixed{.size = 1, .wait = 30s}};
    auto held = pool.acquire();
    std::mutex m;
    std::vector<int> order;
    std::vector<std::thread> waiters;
    for (int i = 0; i < 8; ++i) {
        waiters.emplace_back([&, i] {
            auto l = pool.acquire();
            std::lock_guard lock(m);
            order.push_back(i);
        });
        // wait until waiter i is queued before starting the next: arrival order is then known
        while (pool.stats().waiting != static_cast<std::size_t>(i + 1)) std::this_thread::yield();
    }
    held.release();
    for (auto& w : waiters) w.join();
    CHECK(order == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7});
}

TEST_CASE("max_waiters counts only callers still waiting, not ones already served", "[overflow]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed> pool{fake_connector<>{s}, overflow::fixed{.size = 1, .wait = 10s, .waiters = 1}};
    int refused = 0;
    for (int round = 0; round < 200; ++round) {
        auto held = pool.acquire();
        std::atomic<bool> served{false};
        std::thread waiter([&] {
            auto l = pool.acquire();
            served = true;
        });
        while (pool.stats().waiting == 0) std::this_thread::yield();
        held.release(); // handed to the waiter: it is served, whether or not it has woken yet
        try {
            held = pool.acquire(); // the line is empty again: this caller may wait in it
        } catch (const exhausted_error&) {
            ++refused;
        }
        waiter.join();
        CHECK(served);
    }
    CHECK(refused == 0);
}

TEST_CASE("huge waits saturate: milliseconds::max() waits forever instead of timing out at once", "[overflow]") {
    using namespace std::chrono;
    auto s = std::make_shared<fake_server>();
    SECTION("acquire_for(milliseconds::max())") {
        null_pool<overflow::fixed> pool{fake_connector<>{s}, overflow::fixed{.size = 1, .wait = 10s}};
        auto held = pool.acquire();
        std::atomic<bool> got{false};
        std::thread waiter([&] {
            auto l = pool.acquire_for(milliseconds::max());
            got = true;
        });
        while (pool.stats().waiting == 0) std::this_thread::yield();
        std::this_thread::sleep_for(100ms);
        CHECK_FALSE(got); // still waiting, not timed out
        CHECK(pool.stats().waiting == 1);
        held.release();
        waiter.join();
        CHECK(got);
    }
    SECTION("overflow::fixed{.wait = milliseconds::max()}") {
        null_pool<overflow::fixed> pool{fake_connector<>{s}, overflow::fixed{.size = 1, .wait = milliseconds::max()}};
        auto held = pool.acquire();
        std::atomic<bool> got{false};
        std::thread waiter([&] {
            auto l = pool.acquire();
            got = true;
        });
        while (pool.stats().waiting == 0) std::this_thread::yield();
        std::this_thread::sleep_for(100ms);
        CHECK_FALSE(got);
        held.release();
        waiter.join();
        CHECK(got);
    }
}

TEST_CASE("overflow policies: nonsense numbers are config_errors naming the field and the range",
          "[overflow][config]") {
    auto s = std::make_shared<fake_server>();
    CHECK_THROWS_WITH((null_pool<overflow::fixed>{fake_connector<>{s}, overflow::fixed{.size = 0}}),
                      Catch::Contains("overflow::fixed: size is 0; it must be at least 1"));
    CHECK_THROWS_WITH((null_pool<overflow::fixed>{fake_connector<>{s}, overflow::fixed{.wait = -1ms}}),
                      Catch::Contains("overflow::fixed: wait is -1 ms"));
    CHECK_THROWS_WITH(
        (null_pool<overflow::bounded>{fake_connector<>{s}, overflow::bounded{.size = 0, .max_overflow = 0}}),
        Catch::Contains("size + max_overflow is 0 + 0"));
    CHECK_THROWS_WITH((null_pool<overflow::bounded>{fake_connector<>{s}, overflow::bounded{.wait = -2s}}),
                      Catch::Contains("overflow::bounded: wait is -2000 ms"));
    CHECK_THROWS_WITH((null_pool<overflow::fail_fast>{fake_connector<>{s}, overflow::fail_fast{.size = 0}}),
                      Catch::Contains("overflow::fail_fast: size is 0"));
    CHECK_THROWS_WITH((null_pool<overflow::pass_through>{fake_connector<>{s}, overflow::pass_through{.max_open = 0}}),
                      Catch::Contains("overflow::pass_through: max_open is 0"));
    CHECK_THROWS_WITH((null_pool<overflow::pass_through>{fake_connector<>{s}, overflow::pass_through{.wait = -1ms}}),
                      Catch::Contains("overflow::pass_through: wait is -1 ms"));
    CHECK(s->started == 0);
}

TEST_CASE("a waiter whose handed-off connection fails validation keeps its place at the front", "[overflow]") {
    auto s = std::make_shared<fake_server>();
    using p = fake_pool<validation::probe, recycling::none, retry::none, fork_safety::none, overflow::fixed>;
    for (int round = 0; round < 20; ++round) {
        p pool{fake_connector<>{s}, overflow::fixed{.size = 1, .wait = 10s}};
        auto held = pool.acquire();
        std::mutex m;
        std::vector<int> order;
        std::vector<std::thread> waiters;
        for (int i = 0; i < 2; ++i) {
            waiters.emplace_back([&, i] {
                auto l = pool.acquire();
                std::lock_guard lock(m);
                order.push_back(i);
            });
            while (pool.stats().waiting != static_cast<std::size_t>(i + 1)) std::this_thread::yield();
        }
        s->connection(held.get()->id).alive = false; // dies in the holder's hands; the holder does not notice
        held.release(); // handed to waiter 0, whose validation fails: it must still be served first
        for (auto& w : waiters) w.join();
        CHECK(order == std::vector<int>{0, 1});
    }
}
