#pragma once

// Policies compare times in seconds and minutes (an idle window, a lifetime),
// so the pool reads a coarse clock for them: CLOCK_MONOTONIC_COARSE costs a few
// nanoseconds where steady_clock::now() costs tens on a virtual machine
// (kvm-clock), at a resolution of a few milliseconds. It counts from the same
// base as CLOCK_MONOTONIC, which libstdc++'s steady_clock reads, so its time
// points are steady_clock's, behind by less than one tick. Waits and connect
// deadlines keep the precise clock.

#include <chrono>
#include <type_traits>

#include <time.h>

namespace pqpool::detail {

template <class Clock>
typename Clock::time_point coarse_now() noexcept {
#if defined(CLOCK_MONOTONIC_COARSE) && defined(__GLIBCXX__)
    if constexpr (std::is_same_v<Clock, std::chrono::steady_clock>) {
        timespec ts;
        if (::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) == 0)
            return typename Clock::time_point(std::chrono::duration_cast<typename Clock::duration>(
                std::chrono::seconds{ts.tv_sec} + std::chrono::nanoseconds{ts.tv_nsec}));
    }
#endif
    return Clock::now();
}

} // namespace pqpool::detail
