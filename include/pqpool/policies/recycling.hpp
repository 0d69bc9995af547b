#pragma once

/// \file
/// Recycling: when does a connection retire, and how is it cleaned when it
/// comes back?
///
/// | policy   | cost per acquire            | cost per release                                        |
/// |----------|-----------------------------|---------------------------------------------------------|
/// | `none`   | nothing                     | nothing                                                 |
/// | `limits` | a coarse clock read (a few ns), two compares | a coarse clock read, a transaction-status check; a `ROLLBACK` round trip only when the lease left a transaction open (default) |
///
/// "Coarse" is `CLOCK_MONOTONIC_COARSE`: a few nanoseconds, a resolution of a
/// few milliseconds, ample for lifetimes and idle times.

#include <pqpool/deadline.hpp>
#include <pqpool/detail/archetype.hpp>
#include <pqpool/detail/check.hpp>
#include <pqpool/detail/random.hpp>
#include <pqpool/error.hpp>
#include <pqpool/event.hpp>

#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace pqpool {

/// The category tag of recycling policies.
struct recycling_tag {};

/// A recycling policy.
///
/// Minimal complete definition: `category` (= `recycling_tag`),
/// `static constexpr bool uses_clock`, and
/// - `void on_open(connection_info&, time_point now)`: called once when a
///   connection is opened; sets `expires`;
/// - `bool keep_on_acquire(const connection_info&, time_point now)`: may this
///   idle connection still be handed out?
/// - `bool keep_on_release(Connector&, connection_info&, time_point now)`: a
///   lease returned it; clean it (I/O allowed) and say whether it goes back to
///   the pool (`true`) or is closed (`false`);
/// - `bool keep_idle(const connection_info&, time_point now, std::size_t idle)`:
///   may this connection, idle in the pool with `idle` idle connections in all,
///   stay there? (`false` trims it: idle too long above the floor, or expired);
/// - `std::size_t idle_floor() const`: trimming stops at this many idle
///   connections, and `maintain()` opens connections up to it.
///
/// Laws: none of them throws; they run outside the pool's lock; `now` is
/// meaningful only when `uses_clock` is true. Optionally `void check() const`
/// throws `config_error` for numbers out of range (called by the pool's
/// constructor), and `close_reason reason(const connection_info&, time_point
/// now) const` says why `keep_on_acquire` or `keep_idle` said no, for the
/// observability policy (without it, such closes are `close_reason::recycled`).
template <class P>
concept recycling_policy = std::same_as<typename P::category, recycling_tag> && std::default_initializable<P> &&
    requires(const P& p, detail::archetype_connector& c, detail::archetype_info& info,
             detail::archetype_connector::clock::time_point now) {
    { P::uses_clock } -> std::convertible_to<bool>;
    p.on_open(info, now);
    { p.keep_on_acquire(info, now) } -> std::same_as<bool>;
    { p.keep_on_release(c, info, now) } -> std::same_as<bool>;
    { p.keep_idle(info, now, std::size_t{}) } -> std::same_as<bool>;
    { p.idle_floor() } -> std::same_as<std::size_t>;
};

namespace recycling {

/// Connections live until they break; nothing is cleaned on return. A lease
/// returned inside a transaction hands that transaction to the next user:
/// choose this only when every user ends its own transactions.
struct none {
    using category = recycling_tag;
    static constexpr bool uses_clock = false;
    void check() const noexcept {} // no numbers
    template <class Info, class TimePoint>
    void on_open(Info& info, TimePoint) const noexcept {
        info.expires = TimePoint::max();
    }
    template <class Info, class TimePoint>
    bool keep_on_acquire(const Info&, TimePoint) const noexcept {
        return true;
    }
    template <class C, class Info, class TimePoint>
    bool keep_on_release(C&, Info&, TimePoint) const noexcept {
        return true;
    }
    template <class Info, class TimePoint>
    bool keep_idle(const Info&, TimePoint, std::size_t) const noexcept {
        return true;
    }
    std::size_t idle_floor() const noexcept { return 0; }
};

/// How a returned connection is cleaned.
enum class on_return {
    keep,     ///< Nothing: the next user inherits whatever state it is in.
    rollback, ///< Roll back an open or failed transaction; close one that is busy or in an unknown state.
    discard_all, ///< As `rollback`, then `DISCARD ALL` (drops temp tables, prepared statements, settings): a round trip per release.
};

/// Max lifetime with jitter, max idle time above a floor, max uses, reset on
/// return. The default.
///
/// Each connection's lifetime is drawn once, at birth, uniformly in
/// `[max_lifetime - jitter, max_lifetime]`, so connections opened together do
/// not all retire at the same moment; it is enforced when the connection is
/// acquired and when it is released.
///
/// Idle trimming is lazy: each release looks at the connection idle the
/// longest (one comparison) and closes it when it has been idle longer than
/// `max_idle` while more than `min_idle` are idle. A pool nobody calls does
/// nothing by itself (no hidden thread); a program that goes quiet calls
/// `pool.maintain()` from its own timer to trim, retire expired connections
/// and open up to `min_idle`.
struct limits {
    using category = recycling_tag;
    static constexpr bool uses_clock = true;

    /// The jitter used when none is given.
    static constexpr std::chrono::milliseconds default_jitter{std::chrono::minutes{1}};

    /// A connection retires after at most this long; zero means never.
    /// `milliseconds::max()` (or 1000 years) saturates: never, in practice.
    std::chrono::milliseconds max_lifetime{std::chrono::minutes{30}};
    /// How much earlier than `max_lifetime` it may retire (spread). Not given:
    /// `default_jitter` (1 min), which then must not exceed `max_lifetime`.
    std::optional<std::chrono::milliseconds> jitter{};
    /// A connection retires after this many leases; zero means no limit.
    std::uint64_t max_uses = 0;
    /// How a returned connection is cleaned.
    on_return reset = on_return::rollback;
    /// An idle connection is closed after this long unused (while more than
    /// `min_idle` are idle); zero means never.
    std::chrono::milliseconds max_idle{std::chrono::minutes{10}};
    /// Idle trimming stops at this many idle connections; `maintain()` opens
    /// connections up to this many. At most what the overflow policy keeps
    /// idle (the pool's constructor checks).
    std::size_t min_idle = 0;

    /// The jitter in effect.
    std::chrono::milliseconds effective_jitter() const noexcept { return jitter.value_or(default_jitter); }

    void check() const {
        constexpr std::string_view where = "recycling::limits";
        detail::check_non_negative(where, "max_lifetime", max_lifetime, "never retire");
        detail::check_non_negative(where, "max_idle", max_idle, "never trim");
        if (jitter) {
            detail::check_non_negative(where, "jitter", *jitter, "no spread");
            if (max_lifetime.count() == 0 && jitter->count() > 0)
                detail::fail_check(where, "jitter", detail::show_ms(*jitter),
                                   "0 when max_lifetime is 0 (connections never retire, so there is nothing to "
                                   "spread)");
            if (max_lifetime.count() > 0 && *jitter > max_lifetime)
                detail::fail_check(where, "jitter", detail::show_ms(*jitter),
                                   "at most max_lifetime (" + detail::show_ms(max_lifetime) + ")");
        } else if (max_lifetime.count() > 0 && default_jitter > max_lifetime) {
            throw config_error("pqpool: recycling::limits: max_lifetime is " + detail::show_ms(max_lifetime) +
                               ", shorter than the default jitter of 1 min (" + detail::show_ms(default_jitter) +
                               "); give a jitter of at most max_lifetime, e.g. limits{.max_lifetime = ..., "
                               ".jitter = max_lifetime / 10}");
        }
    }

    template <class Info, class TimePoint>
    void on_open(Info& info, TimePoint now) const noexcept {
        if (max_lifetime.count() == 0) {
            info.expires = TimePoint::max();
            return;
        }
        // In milliseconds, and saturating: a lifetime of 1000 years does not
        // fit in nanoseconds and must mean "never", not wrap into the past.
        const auto spread = std::min(effective_jitter(), max_lifetime);
        info.expires =
            saturating_add(now, max_lifetime - std::chrono::milliseconds{detail::random_up_to(spread.count())});
    }

    template <class Info, class TimePoint>
    bool keep_on_acquire(const Info& info, TimePoint now) const noexcept {
        return now < info.expires && (max_uses == 0 || info.uses < max_uses);
    }

    template <class C, class Info, class TimePoint>
    bool keep_on_release(C& c, Info& info, TimePoint now) const noexcept {
        if (!keep_on_acquire(info, now)) return false; // retiring anyway: no point cleaning it
        if (reset == on_return::keep) return true;
        return c.reset(info.handle, reset == on_return::discard_all);
    }

    template <class Info, class TimePoint>
    bool keep_idle(const Info& info, TimePoint now, std::size_t idle) const noexcept {
        if (!keep_on_acquire(info, now)) return false;
        return max_idle.count() == 0 || idle <= min_idle || shorter_than(now - info.last_used, max_idle);
    }

    std::size_t idle_floor() const noexcept { return min_idle; }

    /// Why `keep_on_acquire` or `keep_idle` said no: expired, used up, or
    /// (otherwise) idle too long.
    template <class Info, class TimePoint>
    close_reason reason(const Info& info, TimePoint now) const noexcept {
        if (!(now < info.expires)) return close_reason::lifetime;
        if (max_uses != 0 && info.uses >= max_uses) return close_reason::uses;
        return close_reason::idle;
    }
};

/// What `pqpool::pool<>` uses when no recycling policy is named.
using default_policy = limits;

} // namespace recycling
} // namespace pqpool
