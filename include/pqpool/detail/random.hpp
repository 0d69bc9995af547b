#pragma once

// A per-thread generator for jitter (lifetimes, backoff). Jitter needs spread,
// not cryptographic quality, and must not take a lock: one xorshift state per
// thread, seeded once from std::random_device and the thread's address.

#include <cstdint>
#include <random>

namespace pqpool::detail {

inline std::uint64_t random_u64() noexcept {
    thread_local std::uint64_t state = [] {
        std::uint64_t seed = 0;
        try {
            std::random_device rd;
            seed = (std::uint64_t{rd()} << 32) ^ rd();
        } catch (...) {
        }
        static thread_local int anchor;
        seed ^= reinterpret_cast<std::uintptr_t>(&anchor) * 0x9E3779B97F4A7C15ull;
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
