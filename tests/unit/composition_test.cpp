// How options compose into a pool type: any order, defaults, concepts, no
// runtime indirection, no space for stateless policies.

#include "catch.hpp"
#include "test_pool.hpp"

#include <pqpool/pool.hpp>

#include <tuple>
#include <type_traits>

using namespace pqpool;
using test::fake_connector;
using test::fake_pool;
using namespace std::chrono_literals;

TEST_CASE("options in any order give the same type", "[composition]") {
    STATIC_REQUIRE(std::is_same_v<pool<validation::probe, overflow::fixed>, pool<overflow::fixed, validation::probe>>);
    STATIC_REQUIRE(std::is_same_v<pool<validation::ping, recycling::none, overflow::fail_fast, retry::none,
                                       fork_safety::none, concurrency::single_thread, observability::counters>,
                                  pool<observability::counters, concurrency::single_thread, fork_safety::none,
                                       retry::none, overflow::fail_fast, recycling::none, validation::ping>>);
    STATIC_REQUIRE(std::is_same_v<pool<fake_connector<>, validation::none>, pool<validation::none, fake_connector<>>>);
}

TEST_CASE("a category left out gets its documented default", "[composition]") {
    using p = pool<>;
    STATIC_REQUIRE(std::is_same_v<p::connector_type, libpq_connector>);
    STATIC_REQUIRE(std::is_same_v<p::validation_policy_type, validation::ping_if_idle>);
    STATIC_REQUIRE(std::is_same_v<p::recycling_policy_type, recycling::limits>);
    STATIC_REQUIRE(std::is_same_v<p::overflow_policy_type, overflow::bounded>);
    STATIC_REQUIRE(std::is_same_v<p::retry_policy_type, retry::exponential_backoff>);
    STATIC_REQUIRE(std::is_same_v<p::fork_safety_policy_type, fork_safety::detect>);
    STATIC_REQUIRE(std::is_same_v<p::concurrency_policy_type, concurrency::mutex>);
    STATIC_REQUIRE(std::is_same_v<p::observability_policy_type, observability::none>);
    // Naming a default explicitly is the same type as leaving it out.
    STATIC_REQUIRE(std::is_same_v<pool<overflow::bounded, validation::ping_if_idle>, pool<>>);

    const overflow::bounded b;
    CHECK(b.size == 5);
    CHECK(b.max_overflow == 10);
    CHECK(b.wait == std::chrono::seconds{30});
    CHECK(validation::ping_if_idle{}.idle_for == std::chrono::seconds{1});
    CHECK(recycling::limits{}.max_lifetime == std::chrono::minutes{30});
    CHECK(recycling::limits{}.reset == recycling::on_return::rollback);
}

using validation_policies = std::tuple<validation::none, validation::probe, validation::ping, validation::ping_if_idle>;
using recycling_policies = std::tuple<recycling::none, recycling::limits>;
using overflow_policies = std::tuple<overflow::fixed, overflow::bounded, overflow::fail_fast, overflow::pass_through>;
using retry_policies = std::tuple<retry::none, retry::exponential_backoff>;
using fork_policies = std::tuple<fork_safety::none, fork_safety::detect, fork_safety::check_pid>;
using concurrency_policies = std::tuple<concurrency::mutex, concurrency::barging, concurrency::single_thread>;
using observability_policies = std::tuple<observability::none, observability::counters>;

TEMPLATE_LIST_TEST_CASE("every validation policy models its concept", "[composition][validation]",
                        validation_policies) {
    STATIC_REQUIRE(validation_policy<TestType>);
    STATIC_REQUIRE_FALSE(recycling_policy<TestType>);
}
TEMPLATE_LIST_TEST_CASE("every recycling policy models its concept", "[composition][recycling]", recycling_policies) {
    STATIC_REQUIRE(recycling_policy<TestType>);
}
TEMPLATE_LIST_TEST_CASE("every overflow policy models its concept", "[composition][overflow]", overflow_policies) {
    STATIC_REQUIRE(overflow_policy<TestType>);
    const TestType p{};
    CHECK(p.max_size() >= 1);
    CHECK(p.keep_idle() <= p.max_size());
}
TEMPLATE_LIST_TEST_CASE("every retry policy models its concept", "[composition][retry]", retry_policies) {
    STATIC_REQUIRE(retry_policy<TestType>);
}
TEMPLATE_LIST_TEST_CASE("every fork_safety policy models its concept", "[composition][fork_safety]", fork_policies) {
    STATIC_REQUIRE(fork_safety_policy<TestType>);
}
TEMPLATE_LIST_TEST_CASE("every concurrency policy models its concept", "[composition][concurrency]",
                        concurrency_policies) {
    STATIC_REQUIRE(concurrency_policy<TestType>);
}
TEMPLATE_LIST_TEST_CASE("every observability policy models its concept", "[composition][observability]",
                        observability_policies) {
    STATIC_REQUIRE(observability_policy<TestType>);
}

TEST_CASE("policies without numbers take no space, and the pool has no virtual function", "[composition]") {
    STATIC_REQUIRE(std::is_empty_v<validation::none>);
    STATIC_REQUIRE(std::is_empty_v<validation::probe>);
    STATIC_REQUIRE(std::is_empty_v<recycling::none>);
    STATIC_REQUIRE(std::is_empty_v<retry::none>);
    STATIC_REQUIRE(std::is_empty_v<fork_safety::none>);
    STATIC_REQUIRE(std::is_empty_v<fork_safety::detect>);
    STATIC_REQUIRE(std::is_empty_v<concurrency::single_thread>);
    STATIC_REQUIRE(std::is_empty_v<observability::none>);

    // The pool object is one pointer to its core, whatever the policies.
    using null = test::null_pool<overflow::fixed, concurrency::mutex, observability::none>;
    STATIC_REQUIRE(sizeof(null) == sizeof(void*));
    STATIC_REQUIRE(!std::is_polymorphic_v<null>);
    STATIC_REQUIRE(!std::is_polymorphic_v<null::lease>);
    STATIC_REQUIRE(!std::is_polymorphic_v<pool<>>);

    // The core of a pool of stateless policies is no larger than the same core
    // with only its overflow policy (the one with numbers) and state.
    using core_null = detail::pool_core<fake_connector<>, validation::none, recycling::none, overflow::fixed,
                                        retry::none, fork_safety::none, concurrency::mutex, observability::none>;
    using core_probe = detail::pool_core<fake_connector<>, validation::probe, recycling::none, overflow::fixed,
                                         retry::none, fork_safety::detect, concurrency::mutex, observability::none>;
    using core_ping = detail::pool_core<fake_connector<>, validation::ping, recycling::none, overflow::fixed,
                                        retry::none, fork_safety::none, concurrency::mutex, observability::none>;
    STATIC_REQUIRE(sizeof(core_null) == sizeof(core_probe));
    // A policy with numbers does take space: the comparison above can fail.
    STATIC_REQUIRE(sizeof(core_ping) > sizeof(core_null));
}

TEST_CASE("leases are move-only", "[composition]") {
    using l = test::null_pool<>::lease;
    STATIC_REQUIRE(!std::is_copy_constructible_v<l>);
    STATIC_REQUIRE(!std::is_copy_assignable_v<l>);
    STATIC_REQUIRE(std::is_nothrow_move_constructible_v<l>);
    STATIC_REQUIRE(std::is_nothrow_move_assignable_v<l>);
}

TEST_CASE("policy objects are passed in any order after the connector", "[composition]") {
    using p = fake_pool<overflow::fixed, validation::ping_if_idle>;
    p a{fake_connector<>{}, overflow::fixed{.size = 3}, validation::ping_if_idle{.idle_for = 2s}};
    p b{fake_connector<>{}, validation::ping_if_idle{.idle_for = 2s}, overflow::fixed{.size = 3}};
    auto l1 = a.acquire(), l2 = a.acquire(), l3 = a.acquire();
    CHECK(a.stats().size == 3);
    CHECK_THROWS_AS(a.acquire_for(0ms), exhausted_error);
    CHECK(b.stats().size == 0);
}

TEST_CASE("numbers out of range are a config_error naming the policy", "[composition]") {
    using p = fake_pool<overflow::fixed>;
    CHECK_THROWS_WITH(p(fake_connector<>{}, overflow::fixed{.size = 0}), Catch::Contains("overflow::fixed"));
    using b = fake_pool<>;
    CHECK_THROWS_AS(b(fake_connector<>{}, overflow::bounded{.size = 0, .max_overflow = 0}), config_error);
    CHECK_THROWS_WITH(b(fake_connector<>{}, recycling::limits{.max_lifetime = 1s, .jitter = 2s}),
                      Catch::Contains("jitter"));
    CHECK_THROWS_AS(b(fake_connector<>{}, retry::exponential_backoff{.attempts = 0}), config_error);
}
