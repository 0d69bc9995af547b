// Recycling: lifetimes with jitter, max uses, reset on return.

#include "catch.hpp"
#include "test_pool.hpp"

#include <algorithm>
#include <vector>

using namespace pqpool;
using namespace pqpool::test;

namespace {
using rpool = manual_pool<validation::none, recycling::limits, retry::none, fork_safety::none, overflow::fixed,
                          observability::counters>;
rpool make(std::shared_ptr<fake_server> s, recycling::limits r, std::size_t size = 4) {
    return rpool{fake_connector<manual_clock>{s}, overflow::fixed{.size = size, .wait = 0ms}, r};
}
} // namespace

TEST_CASE("lifetimes are drawn at birth within [max_lifetime - jitter, max_lifetime]", "[recycling]") {
    manual_clock::reset();
    auto s = std::make_shared<fake_server>();
    auto pool = make(s, {.max_lifetime = 300s, .jitter = 30s}, 100);
    const auto born = manual_clock::now();
    std::vector<rpool::lease> leases;
    for (int i = 0; i < 100; ++i) leases.push_back(pool.acquire());
    std::vector<manual_clock::time_point> expiries;
    for (auto& l : leases) expiries.push_back(l.info().expires);
    leases.clear();
    const auto [lo, hi] = std::minmax_element(expiries.begin(), expiries.end());
    CHECK(*lo >= born + 270s);
    CHECK(*hi <= born + 300s);
    CHECK(*hi - *lo > 15s); // spread over the window, not bunched (fails only with negligible probability)

    // Drive the pool through the window: half-way, some (not all) of the 100
    // retire when acquired; at 300 s every original connection has retired.
    const auto originals_retired_at = [&](std::chrono::seconds t) {
        manual_clock::reset();
        manual_clock::advance(t);
        const auto before = pool.observer().count(event::retired);
        for (int i = 0; i < 100; ++i) leases.push_back(pool.acquire());
        const auto retired = pool.observer().count(event::retired) - before;
        leases.clear();
        return retired;
    };
    const auto mid = originals_retired_at(285s);
    CHECK(mid > 0);
    CHECK(mid < 100);
    CHECK(originals_retired_at(300s) == 100 - mid); // the rest, at the latest at 300 s
}

TEST_CASE("an expired idle connection is retired at acquire", "[recycling]") {
    manual_clock::reset();
    auto s = std::make_shared<fake_server>();
    auto pool = make(s, {.max_lifetime = 60s, .jitter = 0s});
    { auto l = pool.acquire(); }
    manual_clock::advance(59s);
    { CHECK(pool.acquire().get()->id == 0); }
    manual_clock::advance(2s);
    auto l = pool.acquire();
    CHECK(l.get()->id == 1);
    CHECK(s->connection(0).closed);
    CHECK(pool.observer().count(event::retired) == 1);
}

TEST_CASE("lifetime is enforced at release: a busy pool does not keep a connection forever", "[recycling]") {
    manual_clock::reset();
    auto s = std::make_shared<fake_server>();
    auto pool = make(s, {.max_lifetime = 60s, .jitter = 0s});
    {
        auto l = pool.acquire();
        manual_clock::advance(61s); // expires while leased
    }
    CHECK(s->connection(0).closed);
    CHECK(pool.stats().size == 0);
    CHECK(s->resets == 0); // retiring anyway: no ROLLBACK sent
}

TEST_CASE("max_uses retires a connection after that many leases", "[recycling]") {
    auto s = std::make_shared<fake_server>();
    auto pool = make(s, {.max_lifetime = 0s, .jitter = 0s, .max_uses = 3});
    for (int i = 0; i < 3; ++i) CHECK(pool.acquire().get()->id == 0);
    CHECK(s->connection(0).closed);
    CHECK(pool.acquire().get()->id == 1);
}

TEST_CASE("reset on return: rolled back when in a transaction, closed when busy", "[recycling]") {
    auto s = std::make_shared<fake_server>();
    auto pool = make(s, {});
    {
        auto l = pool.acquire();
        l.get()->in_transaction = true;
    }
    CHECK(s->resets == 1);
    CHECK_FALSE(s->connection(0).in_transaction);
    CHECK(pool.stats().idle == 1);
    {
        auto l = pool.acquire();
        l.get()->busy = true; // a query still running
    }
    CHECK(s->connection(0).closed);
    CHECK(pool.stats().size == 0);

    auto keep = make(s, {.reset = recycling::on_return::keep});
    const int resets = s->resets;
    { auto l = keep.acquire(); }
    CHECK(s->resets == resets);
}

TEST_CASE("recycling::none keeps connections forever and never resets", "[recycling]") {
    manual_clock::reset();
    auto s = std::make_shared<fake_server>();
    manual_pool<validation::none, recycling::none, overflow::fixed> pool{fake_connector<manual_clock>{s},
                                                                        overflow::fixed{.size = 1}};
    { auto l = pool.acquire(); }
    manual_clock::advance(std::chrono::hours{24 * 365});
    CHECK(pool.acquire().get()->id == 0);
    CHECK(s->resets == 0);
}

TEST_CASE("idle trimming is lazy, one per release, and never goes below the floor", "[recycling]") {
    manual_clock::reset();
    auto s = std::make_shared<fake_server>();
    auto pool = make(s, {.max_lifetime = 0s, .jitter = 0s, .max_idle = 60s, .min_idle = 2}, 6);
    {
        std::vector<rpool::lease> all;
        for (int i = 0; i < 6; ++i) all.push_back(pool.acquire());
    }
    CHECK(pool.stats().idle == 6);
    manual_clock::advance(61s);
    // Each release trims at most the one connection idle the longest.
    { auto l = pool.acquire(); }
    CHECK(pool.stats().idle == 5);
    for (int i = 0; i < 10; ++i) auto l = pool.acquire();
    CHECK(pool.stats().idle == 2); // the floor: never fewer
    CHECK(s->open() == 2);
    CHECK(pool.observer().count(event::retired) == 4);
}

TEST_CASE("maintain() trims at once, then opens up to the floor", "[recycling]") {
    manual_clock::reset();
    auto s = std::make_shared<fake_server>();
    auto pool = make(s, {.max_lifetime = 0s, .jitter = 0s, .max_idle = 60s, .min_idle = 3}, 6);
    auto first = pool.maintain(); // a cold pool warms up to the floor
    CHECK(first.opened == 3);
    CHECK(first.closed == 0);
    CHECK(pool.stats().idle == 3);
    {
        std::vector<rpool::lease> all;
        for (int i = 0; i < 6; ++i) all.push_back(pool.acquire());
    }
    manual_clock::advance(61s);
    auto second = pool.maintain();
    CHECK(second.closed == 3);
    CHECK(second.opened == 0);
    CHECK(pool.stats().idle == 3);
    CHECK(s->open() == 3);

    // Expired connections are retired by maintain(), floor or not.
    auto expiring = make(s, {.max_lifetime = 10s, .jitter = 0s, .max_idle = 0s, .min_idle = 1}, 2);
    expiring.maintain();
    manual_clock::advance(11s);
    auto third = expiring.maintain();
    CHECK(third.closed == 1);
    CHECK(third.opened == 1);
}
