#pragma once

// What the fuzz targets print about an input that broke a rule: its bytes as
// text, every byte outside printable ASCII (and the backslash) as \xNN, so
// that the report shows exactly what the input held.

#include <cstdio>
#include <string>
#include <string_view>

namespace pqpool::fuzz {

inline std::string printable(std::string_view s) {
    std::string out;
    for (char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u >= 0x20 && u < 0x7f && c != '\\') {
            out += c;
        } else {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", u);
            out += buf;
        }
    }
    return out;
}

} // namespace pqpool::fuzz
