#pragma once

/// \file
/// Observability: what the pool tells about itself besides `stats()`.
///
/// | policy     | cost per event                          |
/// |------------|-----------------------------------------|
/// | `none`     | nothing (default)                        |
/// | `counters` | one relaxed atomic increment            |
///
/// Events are rare ones (connects, failures, retirements, timeouts), never
/// the plain acquire and release of an idle connection.

#include <array>
#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>

namespace pqpool {

/// The category tag of observability policies.
struct observability_tag {};

/// Something that happened in a pool.
enum class event : unsigned char {
    connected,         ///< A new connection was opened.
    connect_failed,    ///< An attempt to open one failed.
    retry,             ///< A failed attempt will be retried after a backoff.
    validation_failed, ///< An idle connection failed validation and was closed.
    retired,           ///< Recycling retired a connection (lifetime, uses, reset failed) or it was marked broken.
    trimmed,           ///< A returned connection was closed because enough were idle (overflow).
    timeout,           ///< An acquire gave up waiting.
    exhausted,         ///< An acquire failed without waiting (fail_fast, waiter limit, single_thread).
    fork_detected,     ///< The pool found itself in a child process and abandoned inherited connections.
};

inline constexpr std::size_t event_count = 9;

/// An observability policy.
///
/// Minimal complete definition: `category` (= `observability_tag`) and
/// `void on_event(event) noexcept`, called outside the pool's lock where it
/// can be, and never on the path of a plain acquire or release.
template <class P>
concept observability_policy = std::same_as<typename P::category, observability_tag> &&
    std::default_initializable<P> && requires(P& p, event e) {
        { p.on_event(e) } noexcept;
    };

namespace observability {

/// Nothing is recorded. Costs nothing. The default.
struct none {
    using category = observability_tag;
    void on_event(event) noexcept {}
};

/// Counts each kind of event; read with `count(event)`.
class counters {
public:
    using category = observability_tag;
    counters() = default;
    counters(const counters& other) noexcept {
        for (std::size_t i = 0; i < event_count; ++i)
            counts_[i].store(other.counts_[i].load(std::memory_order_relaxed), std::memory_order_relaxed);
    }
    counters& operator=(const counters&) = delete;

    void on_event(event e) noexcept { counts_[static_cast<std::size_t>(e)].fetch_add(1, std::memory_order_relaxed); }
    /// How many times `e` happened.
    std::uint64_t count(event e) const noexcept {
        return counts_[static_cast<std::size_t>(e)].load(std::memory_order_relaxed);
    }

private:
    std::array<std::atomic<std::uint64_t>, event_count> counts_{};
};

/// What `pqpool::pool<>` uses when no observability policy is named.
using default_policy = none;

} // namespace observability
} // namespace pqpool
