#pragma once

/// \file
/// Validation: may this idle connection be handed out?
///
/// | policy         | cost per acquire of an idle connection                  |
/// |----------------|---------------------------------------------------------|
/// | `none`         | nothing                                                 |
/// | `probe`        | local status checks and one non-blocking `poll()`       |
/// | `ping`         | one round trip to the server (an empty query)           |
/// | `ping_if_idle` | `probe`, plus a round trip when idle longer than a window (default) |
///
/// A connection that fails validation is closed and the pool takes the next
/// idle one or opens a new one within the acquire timeout: the caller never
/// sees it. A freshly opened connection is not validated.

#include <pqpool/deadline.hpp>
#include <pqpool/detail/archetype.hpp>
#include <pqpool/detail/check.hpp>

#include <algorithm>
#include <chrono>
#include <concepts>

namespace pqpool {

/// The category tag of validation policies.
struct validation_tag {};

/// A validation policy.
///
/// Minimal complete definition: `category` (= `validation_tag`),
/// `static constexpr bool uses_clock`, and
/// `bool validate(Connector&, const connection_info<…>&, time_point now,
/// deadline<clock>& until)`.
/// Laws: `validate` is called outside the pool's lock, on an idle connection
/// the caller now owns; `now` is meaningful only when `uses_clock` is true;
/// whatever it asks the server never outlasts `until.get()` (the end of the
/// acquire's wait); `validate` does not throw; `false` means "close it, do not
/// hand it out". Optionally `void check() const` throws `config_error` for
/// numbers out of range (called by the pool's constructor).
template <class P>
concept validation_policy = std::same_as<typename P::category, validation_tag> && std::default_initializable<P> &&
    requires(const P& p, detail::archetype_connector& c, const detail::archetype_info& info,
             detail::archetype_connector::clock::time_point now, deadline<detail::archetype_connector::clock>& until) {
    { P::uses_clock } -> std::convertible_to<bool>;
    { p.validate(c, info, now, until) } -> std::same_as<bool>;
};

namespace validation {

/// Hands out idle connections unchecked. Costs nothing; a connection the
/// server closed while it was idle reaches the caller.
struct none {
    using category = validation_tag;
    static constexpr bool uses_clock = false;
    void check() const noexcept {} // no numbers
    template <class C, class Info, class TimePoint, class Deadline>
    bool validate(C&, const Info&, TimePoint, Deadline&) const noexcept {
        return true;
    }
};

/// Local checks only: connection status, transaction status, then a
/// zero-timeout `poll()` for a hang-up or unread data. One syscall, no round
/// trip; catches a backend the server killed or a connection it closed, not a
/// silently dropped network path.
struct probe {
    using category = validation_tag;
    static constexpr bool uses_clock = false;
    void check() const noexcept {} // no numbers
    template <class C, class Info, class TimePoint, class Deadline>
    bool validate(C& c, const Info& info, TimePoint, Deadline&) const noexcept {
        return c.probe(info.handle);
    }
};

/// An empty-query round trip on every checkout, like SQLAlchemy's
/// `pool_pre_ping`. Costs one round trip per acquire (about 100 µs on
/// loopback); catches every kind of dead connection. The round trip waits at
/// most `timeout`, and never past the end of the acquire's wait; one cut
/// short by that wait counts as failed (the connection cannot be handed out
/// with its answer pending, so it is closed): a caller whose wait is shorter
/// than a round trip replaces healthy connections, at a connect each.
struct ping {
    using category = validation_tag;
    static constexpr bool uses_clock = false;
    /// How long the round trip may take before the connection counts as dead
    /// (at least 1 ms; `milliseconds::max()`: only the acquire's wait bounds it).
    std::chrono::milliseconds timeout{std::chrono::seconds{5}};

    void check() const { detail::check_positive("validation::ping", "timeout", timeout); }

    template <class C, class Info, class TimePoint, class Deadline>
    bool validate(C& c, const Info& info, TimePoint, Deadline& until) const noexcept {
        return c.probe(info.handle) &&
               c.ping(info.handle, std::min(until.get(), saturating_add(C::clock::now(), timeout)));
    }
};

/// `probe` always; a round trip only when the connection has been idle longer
/// than `idle_for` (pgx's approach). Costs a coarse clock read (a few ns) and
/// a `poll()` per acquire, and a round trip after idling. The default.
struct ping_if_idle {
    using category = validation_tag;
    static constexpr bool uses_clock = true;
    /// Idle longer than this, and the connection is pinged before use (0:
    /// always; `milliseconds::max()`: never).
    std::chrono::milliseconds idle_for{std::chrono::seconds{1}};
    /// How long the round trip may take before the connection counts as dead
    /// (at least 1 ms; never past the end of the acquire's wait).
    std::chrono::milliseconds timeout{std::chrono::seconds{5}};

    void check() const {
        detail::check_non_negative("validation::ping_if_idle", "idle_for", idle_for, "ping every time");
        detail::check_positive("validation::ping_if_idle", "timeout", timeout);
    }

    template <class C, class Info, class TimePoint, class Deadline>
    bool validate(C& c, const Info& info, TimePoint now, Deadline& until) const noexcept {
        if (!c.probe(info.handle)) return false;
        if (!shorter_than(idle_for, now - info.last_used)) return true; // idle for at most idle_for
        return c.ping(info.handle, std::min(until.get(), saturating_add(now, timeout)));
    }
};

/// What `pqpool::pool<>` uses when no validation policy is named.
using default_policy = ping_if_idle;

} // namespace validation
} // namespace pqpool
