// Observability policies.

#include "catch.hpp"
#include "test_pool.hpp"

using namespace pqpool;
using namespace pqpool::test;

TEST_CASE("observability::counters counts each kind of event", "[observability]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed, observability::counters> pool{fake_connector<>{s}, overflow::fixed{.size = 1, .wait = 1ms}};
    {
        auto l = pool.acquire();
        CHECK_THROWS_AS(pool.acquire(), timeout_error);
        l.mark_broken();
    }
    s->fail_next({fault::permanent, "28P01"});
    CHECK_THROWS_AS(pool.acquire(), connect_error);
    const auto& c = pool.observer();
    CHECK(c.count(event::connected) == 1);
    CHECK(c.count(event::timeout) == 1);
    CHECK(c.count(event::retired) == 1);
    CHECK(c.count(event::connect_failed) == 1);
    CHECK(c.count(event::validation_failed) == 0);
}

TEST_CASE("observability::none records nothing and costs no space", "[observability]") {
    STATIC_REQUIRE(std::is_empty_v<observability::none>);
    STATIC_REQUIRE(noexcept(observability::none{}.on_event(event::connected)));
}
