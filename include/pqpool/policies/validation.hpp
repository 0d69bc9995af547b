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

#include <pqpool/detail/archetype.hpp>

#include <chrono>
#include <concepts>

namespace pqpool {

/// The category tag of validation policies.
struct validation_tag {};

/// A validation policy.
///
/// Minimal complete definition: `category` (= `validation_tag`),
/// `static constexpr bool uses_clock`, and
/// `bool validate(Connector&, const connection_info<…>&, time_point now)`.
/// Laws: `validate` is called outside the pool's lock, on an idle connection
/// the caller now owns; `now` is meaningful only when `uses_clock` is true;
/// `validate` does not throw; `false` means "close it, do not hand it out".
template <class P>
concept validation_policy = std::same_as<typename P::category, validation_tag> && std::default_initializable<P> &&
    requires(const P& p, detail::archetype_connector& c, const detail::archetype_info& info,
             detail::archetype_connector::clock::time_point now) {
        { P::uses_clock } -> std::convertible_to<bool>;
        { p.validate(c, info, now) } -> std::same_as<bool>;
    };

namespace validation {

/// Hands out idle connections unchecked. Costs nothing; a connection the
/// server closed while it was idle reaches the caller.
struct none {
    using category = validation_tag;
    static constexpr bool uses_clock = false;
    template <class C, class Info, class TimePoint>
    bool validate(C&, const Info&, TimePoint) const noexcept {
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
    template <class C, class Info, class TimePoint>
    bool validate(C& c, const Info& info, TimePoint) const noexcept {
        return c.probe(info.handle);
    }
};

/// An empty-query round trip on every checkout, like SQLAlchemy's
/// `pool_pre_ping`. Costs one round trip per acquire (about 100 µs on
/// loopback); catches every kind of dead connection.
struct ping {
    using category = validation_tag;
    static constexpr bool uses_clock = false;
    /// How long the round trip may take before the connection counts as dead.
    std::chrono::milliseconds timeout{std::chrono::seconds{5}};

    template <class C, class Info, class TimePoint>
    bool validate(C& c, const Info& info, TimePoint) const noexcept {
        return c.probe(info.handle) && c.ping(info.handle, C::clock::now() + timeout);
    }
};

/// `probe` always; a round trip only when the connection has been idle longer
/// than `idle_for` (pgx's approach). Costs a coarse clock read (a few ns) and
/// a `poll()` per acquire, and a round trip after idling. The default.
struct ping_if_idle {
    using category = validation_tag;
    static constexpr bool uses_clock = true;
    /// Idle longer than this, and the connection is pinged before use.
    std::chrono::milliseconds idle_for{std::chrono::seconds{1}};
    /// How long the round trip may take before the connection counts as dead.
    std::chrono::milliseconds timeout{std::chrono::seconds{5}};

    template <class C, class Info, class TimePoint>
    bool validate(C& c, const Info& info, TimePoint now) const noexcept {
        if (!c.probe(info.handle)) return false;
        if (now - info.last_used <= idle_for) return true;
        return c.ping(info.handle, now + timeout);
    }
};

/// What `pqpool::pool<>` uses when no validation policy is named.
using default_policy = ping_if_idle;

} // namespace validation
} // namespace pqpool
