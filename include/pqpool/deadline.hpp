#pragma once

/// \file
/// `pqpool::deadline`: the end of a caller's wait, and saturating time
/// arithmetic, so that a huge duration means "forever" and never wraps.

#include <chrono>
#include <ratio>
#include <type_traits>

namespace pqpool {

/// `t + d`, or `TimePoint::max()` when that would overflow; a negative `d`
/// counts as zero. Huge durations (`milliseconds::max()`, 1000 years) mean
/// "forever".
template <class TimePoint, class Rep, class Period>
constexpr TimePoint saturating_add(TimePoint t, std::chrono::duration<Rep, Period> d) noexcept {
    using dur = typename TimePoint::duration;
    using given = std::chrono::duration<Rep, Period>;
    if (d.count() <= 0) return t;
    if (t >= TimePoint::max()) return TimePoint::max();
    const dur room = TimePoint::max() - t;
    // Compare in the coarser of the two units: converting towards the finer
    // one multiplies and may overflow; towards the coarser one divides.
    if constexpr (std::ratio_greater_equal_v<Period, typename dur::period>) {
        if (d >= std::chrono::floor<given>(room)) return TimePoint::max();
        return t + std::chrono::duration_cast<dur>(d);
    } else {
        const dur coarse = std::chrono::floor<dur>(d);
        if (coarse >= room) return TimePoint::max();
        return t + coarse;
    }
}

/// `a < b` for durations of any units, without the overflow that converting a
/// huge one to nanoseconds would cause.
template <class R1, class P1, class R2, class P2>
constexpr bool shorter_than(std::chrono::duration<R1, P1> a, std::chrono::duration<R2, P2> b) noexcept {
    using da = std::chrono::duration<R1, P1>;
    using db = std::chrono::duration<R2, P2>;
    if constexpr (std::ratio_greater_equal_v<P2, P1>)
        return std::chrono::floor<db>(a) < b; // exact for `<` since b is whole in its unit
    else
        return a < std::chrono::ceil<da>(b) || (a == std::chrono::ceil<da>(b) && std::chrono::floor<db>(a) < b);
}

/// The end of a caller's wait. The clock is read only when somebody asks
/// (`get()`), so a call that never needs the deadline never pays for a clock
/// read; the first read fixes it. A huge wait saturates to "never".
///
/// Validation policies receive it, so that a round trip they start never
/// outlasts the acquire that asked for it.
template <class Clock>
class deadline {
public:
    using time_point = typename Clock::time_point;

    /// Ends `wait` after the first `get()`.
    explicit deadline(std::chrono::milliseconds wait) noexcept : wait_(wait) {}
    /// No deadline at all.
    static deadline never() noexcept {
        deadline d{std::chrono::milliseconds{0}};
        d.at_ = time_point::max();
        d.fixed_ = true;
        return d;
    }

    /// The deadline (reads the clock on the first call only).
    time_point get() noexcept {
        if (!fixed_) {
            at_ = saturating_add(Clock::now(), wait_);
            fixed_ = true;
        }
        return at_;
    }
    /// The wait it was made with.
    std::chrono::milliseconds wait() const noexcept { return wait_; }

private:
    std::chrono::milliseconds wait_;
    time_point at_{};
    bool fixed_ = false;
};

} // namespace pqpool
