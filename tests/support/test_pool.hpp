#pragma once

// Pools over the fake connector, composed the way pqpool::pool composes them.

#include "fake_connector.hpp"

#include <pqpool/basic_pool.hpp>

#include <chrono>
#include <cstddef>
#include <optional>

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

// A retry policy with a fixed backoff, so that a test does not depend on jitter.
struct fixed_delay {
    using category = retry_tag;
    std::chrono::milliseconds delay{1000};
    unsigned attempts = 3;
    std::size_t connecting = 4;
    std::optional<std::chrono::nanoseconds> next_delay(unsigned failures) const noexcept {
        if (failures == 0 || failures >= attempts) return std::nullopt;
        return std::chrono::nanoseconds{delay};
    }
    std::size_t max_connecting() const noexcept { return connecting; }
};

} // namespace pqpool::test
