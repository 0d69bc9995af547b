#pragma once

/// \file
/// Retry: what happens when opening a connection fails transiently?
///
/// A failure is transient when the server could not be reached or refused the
/// connection for a reason that passes (`connect_error::transient()`: no
/// answer, SQLSTATE class 08, 57P01, 57P02, 57P03, 57P05, 53300). A wrong
/// password, an unknown database or a bad conninfo fails at once. Retries
/// never run past the acquire's deadline. Neither policy costs anything per
/// acquire of an idle connection.

#include <pqpool/detail/check.hpp>
#include <pqpool/detail/random.hpp>
#include <pqpool/error.hpp>

#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <optional>
#include <string_view>

namespace pqpool {

/// The category tag of retry policies.
struct retry_tag {};

/// A retry policy.
///
/// Minimal complete definition: `category` (= `retry_tag`),
/// - `std::optional<std::chrono::nanoseconds> next_delay(unsigned failures) const`:
///   after `failures` consecutive transient failures (1, 2, …), how long to
///   wait before the next attempt, or no value to give up;
/// - `std::size_t max_connecting() const`: connects one pool runs at once.
///   Callers beyond that wait in line for a connection; when an attempt gives
///   up and the pool has no connection that could come back, every waiter
///   gets that attempt's error at once. So an unreachable server sees at most
///   this many attempts in flight per pool, not one per waiting thread.
/// Laws: does not throw; the delays are bounded; `max_connecting() >= 1`.
/// Optionally `void check() const`.
template <class P>
concept retry_policy = std::same_as<typename P::category, retry_tag> && std::default_initializable<P> &&
    requires(const P& p, unsigned failures) {
    { p.next_delay(failures) } -> std::same_as<std::optional<std::chrono::nanoseconds>>;
    { p.max_connecting() } -> std::same_as<std::size_t>;
};

namespace retry {

/// One attempt; a failure reaches the caller. Connects are not limited.
struct none {
    using category = retry_tag;
    void check() const noexcept {} // no numbers
    std::optional<std::chrono::nanoseconds> next_delay(unsigned) const noexcept { return std::nullopt; }
    std::size_t max_connecting() const noexcept { return static_cast<std::size_t>(-1); }
};

/// Capped exponential backoff with full jitter: after the n-th failure, wait
/// a uniformly drawn time in `[0, min(cap, base * 2^(n-1))]`, for at most
/// `attempts` attempts in all, with at most `connecting` connects in flight
/// per pool. The default (5 attempts, 100 ms base, 3 s cap, 2 in flight).
struct exponential_backoff {
    using category = retry_tag;
    unsigned attempts = 5;                                  ///< Attempts in all, the first included.
    std::chrono::milliseconds base{100};                    ///< The first delay's upper bound.
    std::chrono::milliseconds cap{std::chrono::seconds{3}}; ///< No delay exceeds this.
    std::size_t connecting = 2;                             ///< Connects in flight at once, per pool.

    void check() const {
        constexpr std::string_view where = "retry::exponential_backoff";
        detail::check_at_least(where, "attempts", attempts, 1);
        detail::check_at_least(where, "connecting", connecting, 1);
        detail::check_non_negative(where, "base", base, "retry at once");
        detail::check_non_negative(where, "cap", cap, "retry at once");
    }

    /// The upper bound of the delay after the n-th failure (saturating: a
    /// huge cap never wraps).
    std::chrono::nanoseconds ceiling(unsigned failures) const noexcept {
        using std::chrono::milliseconds;
        constexpr auto most = std::chrono::duration_cast<milliseconds>(std::chrono::nanoseconds::max());
        const milliseconds c = std::min(std::max(cap, milliseconds{0}), most);
        milliseconds ceil = std::min(std::max(base, milliseconds{0}), c);
        for (unsigned i = 1; i < failures && ceil < c; ++i) ceil = ceil > c / 2 ? c : ceil * 2;
        return std::chrono::duration_cast<std::chrono::nanoseconds>(std::min(ceil, c));
    }

    std::size_t max_connecting() const noexcept { return connecting; }

    std::optional<std::chrono::nanoseconds> next_delay(unsigned failures) const noexcept {
        if (failures == 0 || failures >= attempts) return std::nullopt;
        return std::chrono::nanoseconds{detail::random_up_to(ceiling(failures).count())};
    }
};

/// What `pqpool::pool<>` uses when no retry policy is named.
using default_policy = exponential_backoff;

} // namespace retry
} // namespace pqpool
