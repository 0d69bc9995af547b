#pragma once

/// \file
/// Overflow: how many connections, and what happens when all are busy?
///
/// | policy         | opens at most        | keeps idle | when all are busy                  |
/// |----------------|----------------------|------------|------------------------------------|
/// | `fixed`        | `size`               | `size`     | waits up to `timeout`              |
/// | `bounded`      | `size + max_overflow`| `size`     | waits up to `timeout` (default)    |
/// | `fail_fast`    | `size`               | `size`     | throws `exhausted_error` at once   |
/// | `pass_through` | `max_size`           | none       | opens one per acquire, closes it on release |
///
/// None costs anything per acquire beyond the pool's lock. Connections are
/// opened lazily, on demand, never while holding the pool's lock. Waiters are
/// served first come, first served; with `max_waiters`, a caller beyond that
/// many waiters gets `exhausted_error` at once.

#include <pqpool/detail/check.hpp>
#include <pqpool/error.hpp>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <limits>
#include <string>

namespace pqpool {

/// The category tag of overflow policies.
struct overflow_tag {};

/// An overflow policy.
///
/// Minimal complete definition: `category` (= `overflow_tag`) and
/// - `std::size_t max_size() const`: connections open (or opening) at most;
/// - `std::size_t keep_idle() const`: idle connections kept; one returned
///   beyond that is closed;
/// - `std::chrono::milliseconds timeout() const`: how long `acquire` waits for
///   a connection; zero means "never wait", `milliseconds::max()` "forever";
/// - `std::size_t max_waiters() const`: callers allowed to wait at once.
/// Laws: `max_size() >= 1`, `keep_idle() <= max_size()`. Optionally
/// `void check() const` throws `config_error` for numbers out of range.
template <class P>
concept overflow_policy = std::same_as<typename P::category, overflow_tag> && std::default_initializable<P> &&
    requires(const P& p) {
    { p.max_size() } -> std::same_as<std::size_t>;
    { p.keep_idle() } -> std::same_as<std::size_t>;
    { p.timeout() } -> std::same_as<std::chrono::milliseconds>;
    { p.max_waiters() } -> std::same_as<std::size_t>;
};

namespace overflow {

inline constexpr std::size_t unlimited = std::numeric_limits<std::size_t>::max();

/// A fixed number of connections; callers wait up to `wait` for one.
struct fixed {
    using category = overflow_tag;
    std::size_t size = 10;                                    ///< Connections at most, all kept.
    std::chrono::milliseconds wait{std::chrono::seconds{30}}; ///< Longest wait in `acquire`.
    std::size_t waiters = unlimited;                          ///< Callers allowed to wait at once.

    void check() const {
        detail::check_at_least("overflow::fixed", "size", size, 1);
        detail::check_non_negative("overflow::fixed", "wait", wait, "never wait");
    }
    std::size_t max_size() const noexcept { return size; }
    std::size_t keep_idle() const noexcept { return size; }
    std::chrono::milliseconds timeout() const noexcept { return wait; }
    std::size_t max_waiters() const noexcept { return waiters; }
};

/// SQLAlchemy's `QueuePool`: `size` connections kept, up to `max_overflow`
/// more opened under load and closed as soon as they are returned while
/// `size` others are idle. The default (5 + 10, 30 s).
struct bounded {
    using category = overflow_tag;
    std::size_t size = 5;                                     ///< Connections kept idle at most.
    std::size_t max_overflow = 10;                            ///< Extra connections under load.
    std::chrono::milliseconds wait{std::chrono::seconds{30}}; ///< Longest wait in `acquire`.
    std::size_t waiters = unlimited;                          ///< Callers allowed to wait at once.

    void check() const {
        if (size + max_overflow == 0 || size + max_overflow < size)
            detail::fail_check("overflow::bounded", "size + max_overflow",
                               std::to_string(size) + " + " + std::to_string(max_overflow), "between 1 and SIZE_MAX");
        detail::check_non_negative("overflow::bounded", "wait", wait, "never wait");
    }
    std::size_t max_size() const noexcept { return size + max_overflow; }
    std::size_t keep_idle() const noexcept { return size; }
    std::chrono::milliseconds timeout() const noexcept { return wait; }
    std::size_t max_waiters() const noexcept { return waiters; }
};

/// A fixed number of connections; when all are busy `acquire` throws
/// `exhausted_error` at once instead of waiting.
struct fail_fast {
    using category = overflow_tag;
    std::size_t size = 10; ///< Connections at most, all kept.

    void check() const { detail::check_at_least("overflow::fail_fast", "size", size, 1); }
    std::size_t max_size() const noexcept { return size; }
    std::size_t keep_idle() const noexcept { return size; }
    std::chrono::milliseconds timeout() const noexcept { return std::chrono::milliseconds{0}; }
    std::size_t max_waiters() const noexcept { return 0; }
};

/// No pooling: a connection per acquire, closed on release (SQLAlchemy's
/// `NullPool`). For running behind PgBouncer in transaction mode, which pools
/// server connections itself. Costs a connect per acquire.
struct pass_through {
    using category = overflow_tag;
    std::size_t max_open = unlimited;                         ///< Connections open at once at most.
    std::chrono::milliseconds wait{std::chrono::seconds{30}}; ///< Longest wait when `max_open` are open.
    std::size_t waiters = unlimited;                          ///< Callers allowed to wait at once.

    void check() const {
        detail::check_at_least("overflow::pass_through", "max_open", max_open, 1);
        detail::check_non_negative("overflow::pass_through", "wait", wait, "never wait");
    }
    std::size_t max_size() const noexcept { return max_open; }
    std::size_t keep_idle() const noexcept { return 0; }
    std::chrono::milliseconds timeout() const noexcept { return wait; }
    std::size_t max_waiters() const noexcept { return waiters; }
};

/// What `pqpool::pool<>` uses when no overflow policy is named.
using default_policy = bounded;

} // namespace overflow
} // namespace pqpool
