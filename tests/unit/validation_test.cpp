// Validation policies against the fake connector and the manual clock.

#include "catch.hpp"
#include "test_pool.hpp"

using namespace pqpool;
using namespace pqpool::test;

namespace {
template <class V>
using vpool = manual_pool<V, recycling::none, retry::none, fork_safety::none, overflow::fixed, observability::counters>;

template <class V>
vpool<V> make(std::shared_ptr<fake_server> s, V v = {}) {
    return vpool<V>{fake_connector<manual_clock>{s}, overflow::fixed{.size = 2, .wait = 0ms}, v};
}

// Returns the connection the pool hands out after `victim` died while idle.
template <class Pool>
fake_connection* after_death(Pool& pool, fake_server& server, bool silently) {
    fake_connection* victim = nullptr;
    { victim = pool.acquire().get(); }
    if (silently)
        server.connection(victim->id).silently_dead = true; // probe passes, a round trip fails
    else
        server.connection(victim->id).alive = false;
    auto l = pool.acquire();
    return l.get();
}
} // namespace

TEST_CASE("validation::none hands out a connection the server dropped", "[validation]") {
    auto s = std::make_shared<fake_server>();
    auto pool = make<validation::none>(s);
    fake_connection* got = after_death(pool, *s, false);
    CHECK_FALSE(got->alive); // the caller gets the dead one: this is what validation prevents
    CHECK(s->probes == 0);
    CHECK(s->pings == 0);
}

TEST_CASE("validation::probe replaces a dropped connection without a round trip", "[validation]") {
    auto s = std::make_shared<fake_server>();
    auto pool = make<validation::probe>(s);
    fake_connection* got = after_death(pool, *s, false);
    CHECK(got->alive);
    CHECK(s->connects == 2);
    CHECK(s->pings == 0);
    CHECK(pool.observer().count(event::validation_failed) == 1);
    CHECK(s->connection(0).closed);
    CHECK(pool.stats().size == 1);
}

TEST_CASE("validation::probe misses a silently dropped path, ping catches it", "[validation]") {
    auto s1 = std::make_shared<fake_server>();
    auto probing = make<validation::probe>(s1);
    CHECK(after_death(probing, *s1, true)->silently_dead);

    auto s2 = std::make_shared<fake_server>();
    auto pinging = make<validation::ping>(s2);
    CHECK_FALSE(after_death(pinging, *s2, true)->silently_dead);
    CHECK(s2->pings == 1);
}

TEST_CASE("validation::ping pings on every checkout of an idle connection", "[validation]") {
    auto s = std::make_shared<fake_server>();
    auto pool = make<validation::ping>(s);
    for (int i = 0; i < 5; ++i) auto l = pool.acquire();
    CHECK(s->pings == 4); // the first lease was a fresh connection
}

TEST_CASE("validation::ping_if_idle pings only after the idle window", "[validation]") {
    manual_clock::reset();
    auto s = std::make_shared<fake_server>();
    auto pool = make(s, validation::ping_if_idle{.idle_for = 1s});
    { auto l = pool.acquire(); }
    for (int i = 0; i < 3; ++i) {
        manual_clock::advance(500ms);
        auto l = pool.acquire();
    }
    CHECK(s->pings == 0);
    CHECK(s->probes == 3);
    manual_clock::advance(1001ms);
    { auto l = pool.acquire(); }
    CHECK(s->pings == 1);
    // and a silently dead connection idle past the window is replaced
    s->connection(0).silently_dead = true;
    manual_clock::advance(2s);
    auto l = pool.acquire();
    CHECK(l.get()->id == 1);
    CHECK(pool.observer().count(event::validation_failed) == 1);
}

TEST_CASE("a failing validation falls through every dead idle connection to a fresh one", "[validation]") {
    auto s = std::make_shared<fake_server>();
    vpool<validation::probe> pool{fake_connector<manual_clock>{s}, overflow::fixed{.size = 3, .wait = 0ms}};
    { auto a = pool.acquire(), b = pool.acquire(), c = pool.acquire(); }
    for (int i = 0; i < 3; ++i) s->connection(i).alive = false;
    auto l = pool.acquire();
    CHECK(l.get()->alive);
    CHECK(pool.observer().count(event::validation_failed) == 3);
    CHECK(pool.stats().size == 1);
    CHECK(s->open() == 1);
}

TEST_CASE("validation policies: nonsense numbers are config_errors naming the field, the value and the range",
          "[validation][config]") {
    using std::chrono::milliseconds;
    auto s = std::make_shared<fake_server>();
    using ping_pool = fake_pool<validation::ping, recycling::none, retry::none, fork_safety::none, overflow::fixed>;
    using idle_pool =
        fake_pool<validation::ping_if_idle, recycling::none, retry::none, fork_safety::none, overflow::fixed>;
    CHECK_THROWS_WITH((ping_pool{fake_connector<>{s}, validation::ping{.timeout = 0ms}}),
                      Catch::Contains("validation::ping: timeout is 0 ms; it must be at least 1 ms"));
    CHECK_THROWS_WITH((ping_pool{fake_connector<>{s}, validation::ping{.timeout = -1s}}),
                      Catch::Contains("validation::ping: timeout is -1000 ms"));
    CHECK_THROWS_WITH((idle_pool{fake_connector<>{s}, validation::ping_if_idle{.idle_for = -1ms}}),
                      Catch::Contains("validation::ping_if_idle: idle_for is -1 ms"));
    CHECK_THROWS_WITH((idle_pool{fake_connector<>{s}, validation::ping_if_idle{.timeout = 0ms}}),
                      Catch::Contains("validation::ping_if_idle: timeout is 0 ms"));
    CHECK_NOTHROW(ping_pool{fake_connector<>{s}, validation::ping{.timeout = milliseconds::max()}});
    CHECK_NOTHROW(idle_pool{fake_connector<>{s}, validation::ping_if_idle{.idle_for = 0ms}});
    CHECK(s->started == 0);
}

TEST_CASE("retry::exponential_backoff: nonsense numbers are config_errors, a huge cap saturates", "[retry][config]") {
    using std::chrono::milliseconds;
    CHECK_THROWS_WITH((retry::exponential_backoff{.attempts = 0}.check()),
                      Catch::Contains("retry::exponential_backoff: attempts is 0; it must be at least 1"));
    CHECK_THROWS_WITH((retry::exponential_backoff{.connecting = 0}.check()), Catch::Contains("connecting is 0"));
    CHECK_THROWS_WITH((retry::exponential_backoff{.base = -1ms}.check()), Catch::Contains("base is -1 ms"));
    CHECK_THROWS_WITH((retry::exponential_backoff{.cap = -1ms}.check()), Catch::Contains("cap is -1 ms"));
    const retry::exponential_backoff huge{.attempts = 100, .base = milliseconds::max(), .cap = milliseconds::max()};
    CHECK_NOTHROW(huge.check());
    CHECK(huge.ceiling(1) > std::chrono::hours{24 * 365}); // saturated, not wrapped into the past
    CHECK(huge.ceiling(64) == huge.ceiling(1));
    CHECK(*huge.next_delay(3) >= std::chrono::nanoseconds{0});
}
