// A policy with no default (a sink of a lambda that captures) that is not passed to the
// constructor is one error saying so, not also "no matching constructor" for the policy.
// expect: pqpool::pool: this policy has no default
#include <fake_connector.hpp>
#include <pqpool/pool.hpp>

void f() {
    int n = 0;
    auto log = pqpool::observability::sink{[&n](const auto&) noexcept { ++n; }};
    pqpool::pool<pqpool::test::fake_connector<>, decltype(log)> p{pqpool::test::fake_connector<>{}};
}
