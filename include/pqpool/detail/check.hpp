#pragma once

// The one shape of every "this number makes no sense" error, so that each
// policy's check() names the field, the value and the allowed range the same
// way.

#include <pqpool/error.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace pqpool::detail {

inline std::string show_ms(std::chrono::milliseconds d) {
    if (d == std::chrono::milliseconds::max()) return "milliseconds::max()";
    return std::to_string(d.count()) + " ms";
}

[[noreturn]] inline void fail_check(std::string_view where, std::string_view field, const std::string& value,
                                    std::string_view allowed) {
    throw config_error("pqpool: " + std::string(where) + ": " + std::string(field) + " is " + value + "; it must be " +
                       std::string(allowed));
}

// A timeout: zero or negative makes no sense; huge means "no limit".
inline void check_positive(std::string_view where, std::string_view field, std::chrono::milliseconds d) {
    if (d.count() <= 0) fail_check(where, field, show_ms(d), "at least 1 ms (milliseconds::max() means no limit)");
}

// A wait or a window: zero is meaningful, negative is not.
inline void check_non_negative(std::string_view where, std::string_view field, std::chrono::milliseconds d,
                               std::string_view zero_means) {
    if (d.count() < 0)
        fail_check(where, field, show_ms(d),
                   "0 (" + std::string(zero_means) + ") or more (milliseconds::max() means no limit)");
}

inline void check_at_least(std::string_view where, std::string_view field, std::uint64_t value, std::uint64_t least) {
    if (value < least) fail_check(where, field, std::to_string(value), "at least " + std::to_string(least));
}

} // namespace pqpool::detail
