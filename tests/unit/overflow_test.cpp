// Overflow policies: how many connections, and what happens when all are busy.

#include "catch.hpp"
#include "test_pool.hpp"

#include <optional>
#include <thread>
#include <vector>

using namespace pqpool;
using namespace pqpool::test;

TEST_CASE("overflow::bounded keeps `size`, closes overflow connections on return", "[overflow]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::bounded> pool{fake_connector<>{s}, overflow::bounded{.size = 2, .max_overflow = 2, .wait = 20ms}};
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
