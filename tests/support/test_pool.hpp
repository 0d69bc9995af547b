#pragma once

// Pools over the fake connector, composed the way pqpool::pool composes them.

#include "fake_connector.hpp"

#include <pqpool/basic_pool.hpp>

#include <chrono>

namespace pqpool::test {

// Real time (for tests that wait on other threads).
template <class... Options>
using fake_pool = typename detail::select<fake_connector<>, Options...>::type;

// Manual time (lifetimes, idle windows, backoff): never sleeps.
template <class... Options>
using manual_pool = typename detail::select<fake_connector<manual_clock>, Options...>::type;

// Every category at its cheapest.
template <class... More>
using null_pool = fake_pool<validation::none, recycling::none, retry::none, fork_safety::none, More...>;

using namespace std::chrono_literals;

} // namespace pqpool::test
