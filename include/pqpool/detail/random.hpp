#pragma once

// A per-thread generator for jitter (lifetimes, backoff). Jitter needs spread,
// not cryptographic quality, and must not take a lock: one xorshift state per
// thread. Its seed mixes the clock, the thread's address and a process-wide
// count of seeded threads, so that threads, and processes started together,
// draw differently. (No <random>: std::random_device alone costs every
// translation unit that includes a pool about half a second to compile.)

#include <atomic>
#include <chrono>
#include <cstdint>

namespace pqpool::detail {

// SplitMix64's finaliser: spreads nearby inputs over all 64 bits.
constexpr std::uint64_t mix64(std::uint64_t z) noexcept {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

inline std::uint64_t random_u64() noexcept {
    thread_local std::uint64_t state = [] {
        static std::atomic<std::uint64_t> threads{0};
        static thread_local int anchor;
        const auto ticks =
            static_cast<std::uint64_t>(std::chrono::high_resolution_clock::now().time_since_epoch().count());
        const std::uint64_t seed = mix64(ticks) ^ mix64(reinterpret_cast<std::uintptr_t>(&anchor)) ^
                                   mix64(threads.fetch_add(1, std::memory_order_relaxed) * 0x9E3779B97F4A7C15ull + 1);
        return seed ? seed : 0x2545F4914F6CDD1Dull;
    }();
    // xorshift64*
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1Dull;
}

// Uniform in [0, bound]; bound == 0 gives 0.
template <class Rep>
Rep random_up_to(Rep bound) noexcept {
    if (bound <= 0) return 0;
    return static_cast<Rep>(random_u64() % (static_cast<std::uint64_t>(bound) + 1));
}

} // namespace pqpool::detail
