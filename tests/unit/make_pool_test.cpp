// make_pool: the pool type deduced from the policy objects, so each policy is named once;
// the same type as pool<...> of those policies, holding the numbers passed.

#include "catch.hpp"
#include "child.hpp"
#include "test_pool.hpp"

#include <pqpool/pool.hpp>

#include <cstdlib>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

using namespace pqpool;
using test::fake_connector;
using test::fake_pool;
using test::fake_server;
using namespace std::chrono_literals;

TEST_CASE("make_pool's type is pool<...> of the policies passed, in any order", "[composition][make_pool]") {
    using deduced = decltype(make_pool("host=db", overflow::bounded{}, validation::probe{}));
    STATIC_REQUIRE(std::is_same_v<deduced, pool<overflow::bounded, validation::probe>>);
    STATIC_REQUIRE(std::is_same_v<deduced, pool<validation::probe, overflow::bounded>>);
    STATIC_REQUIRE(std::is_same_v<decltype(make_pool("host=db", validation::probe{}, overflow::bounded{})), deduced>);
    // Every category at once.
    STATIC_REQUIRE(std::is_same_v<decltype(make_pool("host=db", validation::ping{}, recycling::none{},
                                                     overflow::fail_fast{}, retry::none{}, fork_safety::none{},
                                                     concurrency::single_thread{}, observability::counters{})),
                                  pool<observability::counters, concurrency::single_thread, fork_safety::none,
                                       retry::none, overflow::fail_fast, recycling::none, validation::ping>>);
    // No policy: the defaults, pool<>.
    STATIC_REQUIRE(std::is_same_v<decltype(make_pool("host=db")), pool<>>);
    // The conninfo may come as any string type.
    const std::string conninfo = "host=db";
    STATIC_REQUIRE(std::is_same_v<decltype(make_pool(conninfo, overflow::fixed{})), pool<overflow::fixed>>);
    STATIC_REQUIRE(
        std::is_same_v<decltype(make_pool(std::string{"host=db"}, overflow::fixed{})), pool<overflow::fixed>>);
    char* mutable_conninfo = nullptr;
    STATIC_REQUIRE(std::is_same_v<decltype(make_pool(mutable_conninfo, overflow::fixed{})), pool<overflow::fixed>>);
    // Const policy objects (from configuration) deduce the same.
    const overflow::fixed from_config{.size = 4};
    STATIC_REQUIRE(std::is_same_v<decltype(make_pool("host=db", from_config)), pool<overflow::fixed>>);
}

TEST_CASE("make_pool takes a connector object's type as the pool's connector", "[composition][make_pool]") {
    STATIC_REQUIRE(
        std::is_same_v<decltype(make_pool(std::declval<libpq_connector>(), overflow::fixed{})), pool<overflow::fixed>>);
    STATIC_REQUIRE(std::is_same_v<decltype(make_pool(std::declval<const libpq_connector&>(), overflow::fixed{})),
                                  pool<libpq_connector, overflow::fixed>>);
    STATIC_REQUIRE(
        std::is_same_v<decltype(make_pool(fake_connector<>{}, validation::none{})), fake_pool<validation::none>>);
    STATIC_REQUIRE(std::is_same_v<decltype(make_pool(fake_connector<>{}, validation::none{})),
                                  pool<fake_connector<>, validation::none>>);
}

TEST_CASE("make_pool's pool holds the numbers of the policy objects passed", "[pool][make_pool]") {
    auto server = std::make_shared<fake_server>();
    auto p = make_pool(fake_connector<>{server}, overflow::fixed{.size = 2, .wait = 0ms}, validation::none{},
                       recycling::limits{.max_lifetime = 0ms, .max_uses = 1}, retry::none{}, fork_safety::none{},
                       observability::counters{});
    CHECK(p.overflow().size == 2);
    CHECK(p.overflow().wait == 0ms);
    {
        auto a = p.acquire();
        auto b = p.acquire();
        CHECK_THROWS_AS(p.acquire(), exhausted_error); // size 2, no wait
        CHECK(p.observer().count(event::exhausted) == 1);
    }
    CHECK(server->open() == 0); // max_uses 1: both retired on release
    CHECK(p.observer().count(event::retired) == 2);
    CHECK(p.observer().count(event::connected) == 2);
}

TEST_CASE("make_pool checks numbers and conninfo as the constructor does", "[pool][make_pool]") {
    CHECK_THROWS_WITH(make_pool(fake_connector<>{}, overflow::fixed{.size = 0}),
                      Catch::Contains("overflow::fixed: size is 0; it must be at least 1"));
    CHECK_THROWS_AS(make_pool("host=db password=hunter2 nonsense", overflow::fixed{}), config_error);
    try {
        (void)make_pool("host=db password=hunter2 nonsense");
        FAIL("a conninfo libpq cannot parse was accepted");
    } catch (const config_error& e) {
        CHECK_THAT(e.what(), !Catch::Contains("hunter2"));
    }
    // A conninfo libpq accepts needs no server: connections open on demand.
    auto p = make_pool("host=127.0.0.1 port=1 connect_timeout=2", overflow::fixed{.size = 3});
    CHECK(p.overflow().size == 3);
    CHECK(p.stats() == pool_stats{});
}

TEST_CASE("make_pool(std::getenv of an unset variable): a null connection string is a config_error, not a crash",
          "[pool][make_pool]") {
    const char* unset = std::getenv("PQPOOL_TEST_SURELY_UNSET_DATABASE_URL");
    REQUIRE(unset == nullptr);
    // In a child, so that a crash fails this test and not the whole run.
    CHECK(test::in_child([&] {
              try {
                  (void)make_pool(unset);
                  return 1;
              } catch (const config_error& e) {
                  return std::string(e.what()).find("connection string is a null pointer") != std::string::npos ? 0 : 2;
              }
          }) == 0);
    CHECK_THROWS_AS(pool<>{static_cast<const char*>(nullptr)}, config_error);
    CHECK_THROWS_AS((libpq_connector{static_cast<const char*>(nullptr), libpq_options{}}), config_error);
}

TEST_CASE("a pool from make_pool moves like any pool, the moved-from one is not valid()", "[pool][make_pool]") {
    auto server = std::make_shared<fake_server>();
    auto a = make_pool(fake_connector<>{server}, overflow::fixed{.size = 1, .wait = 0ms}, validation::none{});
    auto lease = a.acquire();
    auto b = std::move(a);
    CHECK_FALSE(a.valid());
    CHECK(b.valid());
    CHECK_THROWS_AS(a.acquire(), closed_error);
    lease.release();
    CHECK(b.stats().idle == 1);
    CHECK(b.acquire().get() != nullptr);
}
