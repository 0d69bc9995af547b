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

TEST_CASE("a floor above what the overflow policy keeps idle is a config_error, not an endless maintain()",
          "[recycling][config]") {
    auto s = std::make_shared<fake_server>();
    using bpool = manual_pool<validation::none, recycling::limits, retry::none, fork_safety::none, overflow::bounded>;
    CHECK_THROWS_WITH((bpool{fake_connector<manual_clock>{s}, overflow::bounded{.size = 2, .max_overflow = 8},
                             recycling::limits{.min_idle = 3}}),
                      Catch::Contains("min_idle = 3") && Catch::Contains("(2"));
    using ppool =
        manual_pool<validation::none, recycling::limits, retry::none, fork_safety::none, overflow::pass_through>;
    CHECK_THROWS_WITH((ppool{fake_connector<manual_clock>{s}, recycling::limits{.min_idle = 1}}),
                      Catch::Contains("min_idle = 1") && Catch::Contains("closes every connection on release"));
    CHECK_THROWS_AS(
        (rpool{fake_connector<manual_clock>{s}, overflow::fixed{.size = 2}, recycling::limits{.min_idle = 3}}),
        config_error);
    CHECK(s->started == 0);
    // At the edge it is fine.
    bpool ok{fake_connector<manual_clock>{s}, overflow::bounded{.size = 2, .max_overflow = 8},
             recycling::limits{.min_idle = 2}};
    CHECK(ok.maintain().opened == 2);
    CHECK(ok.maintain().opened == 0);
    CHECK(s->started == 2);
}

TEST_CASE("maintain() with max_uses = 1 opens min_idle connections once, and each serves one lease", "[recycling]") {
    manual_clock::reset();
    auto s = std::make_shared<fake_server>();
    auto pool = make(s, {.max_uses = 1, .min_idle = 3}, 4);
    const auto first = pool.maintain();
    CHECK(first.opened == 3);
    CHECK(s->started == 3); // not one more: the connections maintain() opens are unused, so they stay idle
    CHECK(pool.stats().idle == 3);
    CHECK(pool.maintain().opened == 0);
    {
        auto l = pool.acquire();
        CHECK(l.info().uses == 1);
    }
    CHECK(pool.stats().idle == 2); // used once: retired on return
    CHECK(pool.maintain().opened == 1);
    CHECK(s->started == 4);
}

TEST_CASE("maintain() does a bounded amount of work per call even when connects keep failing", "[recycling]") {
    manual_clock::reset();
    auto s = std::make_shared<fake_server>();
    using fpool = manual_pool<validation::none, recycling::limits, retry::exponential_backoff, fork_safety::none,
                              overflow::fixed>;
    fpool pool{fake_connector<manual_clock>{s}, overflow::fixed{.size = 4, .wait = 1s},
               recycling::limits{.min_idle = 3}, retry::exponential_backoff{.attempts = 100, .base = 1s, .cap = 1s}};
    s->fail_next({fault::transient, "08001"}, 1000);
    const auto before = manual_clock::slept();
    CHECK(pool.maintain().opened == 0); // one attempt fails; the chain must back off: left for the next call
    CHECK(s->attempts == 1);
    CHECK(manual_clock::slept() == before); // maintain() never sleeps a backoff
    CHECK(pool.stats().opening == 1);       // the chain is parked, not lost
    CHECK(pool.maintain().opened == 0);     // still backing off: nothing tried
    CHECK(s->attempts == 1);
    manual_clock::advance(2s);
    CHECK(pool.maintain().opened == 0); // one more attempt, one more failure
    CHECK(s->attempts == 2);
    s->faults.clear();
    manual_clock::advance(2s);
    CHECK(pool.maintain().opened == 3); // the parked chain, then two new ones
    CHECK(pool.stats() == pool_stats{.size = 3, .idle = 3});
}

TEST_CASE("huge lifetimes and idle limits saturate: they mean 'never', not 'at once'", "[recycling][config]") {
    manual_clock::reset();
    auto s = std::make_shared<fake_server>();
    using namespace std::chrono;
    SECTION("max_lifetime = 1000 years") {
        auto pool = make(s, {.max_lifetime = duration_cast<milliseconds>(years{1000}), .jitter = 1min}, 2);
        for (int i = 0; i < 5; ++i) auto l = pool.acquire();
        CHECK(s->connects == 1);
    }
    SECTION("max_lifetime = milliseconds::max()") {
        auto pool = make(s, {.max_lifetime = milliseconds::max()}, 2);
        for (int i = 0; i < 5; ++i) auto l = pool.acquire();
        CHECK(s->connects == 1);
    }
    SECTION("max_idle = milliseconds::max() keeps every idle connection") {
        auto pool = make(s, {.max_lifetime = 0ms, .max_idle = milliseconds::max()}, 3);
        { auto a = pool.acquire(), b = pool.acquire(), c = pool.acquire(); }
        manual_clock::advance(hours{24 * 365});
        { auto l = pool.acquire(); }
        pool.maintain();
        CHECK(pool.stats().idle == 3);
    }
}

TEST_CASE("recycling::limits: nonsense numbers are config_errors naming the field, the value and the range",
          "[recycling][config]") {
    using namespace std::chrono;
    CHECK_THROWS_WITH((recycling::limits{.max_lifetime = -1s}.check()),
                      Catch::Contains("max_lifetime is -1000 ms") && Catch::Contains("must be 0"));
    CHECK_THROWS_WITH((recycling::limits{.max_idle = -1ms}.check()), Catch::Contains("max_idle is -1 ms"));
    CHECK_THROWS_WITH((recycling::limits{.jitter = -1ms}.check()), Catch::Contains("jitter is -1 ms"));
    CHECK_THROWS_WITH((recycling::limits{.max_lifetime = 10s, .jitter = 11s}.check()),
                      Catch::Contains("jitter is 11000 ms") && Catch::Contains("at most max_lifetime (10000 ms)"));
    CHECK_THROWS_WITH((recycling::limits{.max_lifetime = 0s, .jitter = 5s}.check()),
                      Catch::Contains("jitter is 5000 ms") && Catch::Contains("max_lifetime is 0"));
    // A jitter the user never set is not blamed on the user: the message names the default and the fix.
    CHECK_THROWS_WITH((recycling::limits{.max_lifetime = 30s}.check()),
                      Catch::Contains("max_lifetime is 30000 ms") && Catch::Contains("default jitter of 1 min") &&
                          Catch::Contains(".jitter"));
    CHECK_NOTHROW(recycling::limits{.max_lifetime = 0s}.check()); // never retire: the default jitter is moot
    CHECK_NOTHROW((recycling::limits{.max_lifetime = 30s, .jitter = 3s}.check()));
    CHECK_NOTHROW((recycling::limits{.max_lifetime = milliseconds::max(), .max_idle = milliseconds::max()}.check()));
}

TEST_CASE("an invalidation retires every connection opened before it, at acquire, release and maintain()",
          "[recycling][epoch]") {
    auto s = std::make_shared<fake_server>();
    using p = fake_pool<validation::none, recycling::none, retry::none, fork_safety::none, overflow::fixed,
                        observability::counters>;
    p pool{fake_connector<>{s}, overflow::fixed{.size = 4, .wait = 1s}};
    auto held = pool.acquire();
    { auto a = pool.acquire(), b = pool.acquire(); }
    REQUIRE(pool.stats().idle == 2);
    CHECK(pool.stats().epoch == 0);
    s->signal_server_gone(); // e.g. a FATAL 57P01 seen on one connection
    CHECK(pool.stats().epoch == 1);
    {
        auto fresh = pool.acquire(); // both idle ones are old: retired, a new one is opened
        CHECK(fresh.get()->id == 3);
    }
    CHECK(s->connection(1).closed);
    CHECK(s->connection(2).closed);
    held.release(); // the one that was out is retired on its return
    CHECK(s->connection(0).closed);
    CHECK(s->open() == 1);
    CHECK(pool.stats() == pool_stats{.size = 1, .idle = 1, .epoch = 1});

    pool.invalidate(); // by hand, e.g. the application learned of a failover
    CHECK(pool.maintain().closed == 1);
    CHECK(pool.stats().epoch == 2);
    CHECK(s->open() == 0);
}

TEST_CASE("a connect refused with 57P03 (a server starting or shutting down) invalidates the older connections, a "
          "wrong password or an unreachable server does not",
          "[recycling][epoch]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed> pool{fake_connector<>{s}, overflow::fixed{.size = 3, .wait = 50ms}};
    auto held = pool.acquire();
    { auto idle = pool.acquire(); }
    s->fail_next({fault::transient, "57P03"}); // "the database system is shutting down"
    auto second = pool.acquire();              // the idle one is current: handed out
    CHECK_THROWS_AS(pool.acquire(), error);    // needs a connect, which is refused
    CHECK(pool.stats().epoch == 1);
    second.release();
    held.release();
    CHECK(s->open() == 0);                     // both were opened to the server that went away: retired on return
    s->fail_next({fault::permanent, "28P01"}); // a wrong password says nothing about the server
    CHECK_THROWS_AS(pool.acquire(), connect_error);
    CHECK(pool.stats().epoch == 1);
    s->fail_next({fault::transient, "08001"}); // nor does a network failure while connecting: the
    CHECK_THROWS_AS(pool.acquire(), error);    // connections already open may be fine (another path)
    CHECK(pool.stats().epoch == 1);
}

TEST_CASE("run(): a connection lost during the work moves the epoch, so the retry gets a fresh connection, not "
          "an older idle one",
          "[recycling][epoch][run]") {
    auto s = std::make_shared<fake_server>();
    using p = fake_pool<validation::none, recycling::none, fork_safety::none, fixed_delay, overflow::fixed>;
    p pool{fake_connector<>{s}, overflow::fixed{.size = 3, .wait = 1s}, fixed_delay{.delay = 0ms}};
    {
        auto a = pool.acquire(), b = pool.acquire(); // two idle connections, both opened before the loss
    }
    REQUIRE(pool.stats().idle == 2);
    int calls = 0;
    std::vector<int> used;
    pool.run([&](fake_connection* c) {
        used.push_back(c->id);
        if (++calls == 1) c->alive = false; // the server went away mid-work
    });
    CHECK(pool.stats().epoch == 1);
    CHECK(calls == 2);
    REQUIRE(used.size() == 2);
    CHECK(used[1] == 2); // a new connection: the other idle one was retired as older, not handed out
    CHECK(s->connection(0).closed);
    CHECK(s->connection(1).closed);
    CHECK(pool.stats() == pool_stats{.size = 1, .idle = 1, .epoch = 1});
}

TEST_CASE("one event moves the epoch once: a second connection that saw it, opened before the move, does not "
          "retire the connections opened since",
          "[recycling][epoch][run]") {
    auto s = std::make_shared<fake_server>();
    using p = fake_pool<validation::none, recycling::none, fork_safety::none, fixed_delay, overflow::fixed>;
    p pool{fake_connector<>{s}, overflow::fixed{.size = 3, .wait = 1s}, fixed_delay{.delay = 0ms}};
    { auto a = pool.acquire(), b = pool.acquire(); }
    int outer = 0, inner = 0;
    pool.run([&](fake_connection* x) { // holds one connection of epoch 0
        if (++outer > 1) return;
        pool.run([&](fake_connection* y) { // the other one, also of epoch 0
            if (++inner == 1) y->alive = false;
        });
        CHECK(pool.stats().epoch == 1); // the inner loss moved it; the inner retry opened a connection of epoch 1
        x->alive = false;               // the same failover, seen late by a connection of epoch 0
    });
    CHECK(outer == 2);
    CHECK(inner == 2);
    CHECK(pool.stats().epoch == 1); // not 2: the connection of epoch 1 is current, and was reused
    CHECK(s->connects == 3);
    CHECK(s->open() == 1);
}
