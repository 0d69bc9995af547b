// Fuzz target: arbitrary text as libpq's (verbose) message about a failed
// connect, through the diagnosis: parse_connect_failure, last_sqlstate_in,
// looks_like_configuration_mistake and without_server_prefix. Beyond not
// crashing and not reading out of bounds (ASan), the results must hold:
//   - the SQLSTATE is empty or five of [0-9A-Z], and stands in the text as
//     `:  CODE: ` (the verbose shape), with no such code after it;
//   - the message is the input without its LOCATION lines, trimmed, never
//     empty;
//   - transience: false when a password was missing; else, with a SQLSTATE,
//     is_transient_sqlstate's answer; without one, true unless the text names
//     a configuration mistake.
// The first input byte's low bit is PQconnectionNeedsPassword; the rest is
// the text.

#include "printable.hpp"

#include <pqpool/connector/libpq.hpp>
#include <pqpool/detail/connect_failure.hpp>
#include <pqpool/error.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace {

[[noreturn]] void violation(const char* what, std::string_view text, const std::string& detail) {
    std::fprintf(stderr, "\nfuzz_sqlstate: %s\n  text: \"%s\"\n  got: \"%s\"\n", what,
                 pqpool::fuzz::printable(text).c_str(), pqpool::fuzz::printable(detail).c_str());
    __builtin_trap();
}

bool is_code_char(char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z'); }

// Where `:  CODE: ` stands in `text` at `at`, written apart from last_sqlstate_in.
bool code_at(std::string_view text, std::size_t at) {
    if (at + 10 > text.size() || text.substr(at, 3) != ":  " || text.substr(at + 8, 2) != ": ") return false;
    for (std::size_t i = at + 3; i < at + 8; ++i)
        if (!is_code_char(text[i])) return false;
    return true;
}

// The input's lines that do not start with "LOCATION:", joined as they were.
std::string without_location_lines(std::string_view raw) {
    std::string out;
    while (!raw.empty()) {
        const std::size_t nl = raw.find('\n');
        const std::size_t n = nl == std::string_view::npos ? raw.size() : nl + 1;
        if (raw.substr(0, 9) != "LOCATION:") out.append(raw.substr(0, n));
        raw.remove_prefix(n);
    }
    return out;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const bool needs_password = (data[0] & 1) != 0;
    const std::string_view raw(reinterpret_cast<const char*>(data) + 1, size - 1);
    namespace d = pqpool::detail;

    // The code alone, on the raw text.
    const std::string code = d::last_sqlstate_in(raw);
    std::size_t last = std::string_view::npos;
    for (std::size_t at = 0; at < raw.size(); ++at)
        if (code_at(raw, at)) last = at;
    const std::string expected = last == std::string_view::npos ? std::string() : std::string(raw.substr(last + 3, 5));
    if (code != expected) violation("last_sqlstate_in is not the last `:  CODE: ` in the text", raw, code);

    const d::libpq_failure f = d::parse_connect_failure(raw, needs_password);
    if (!f.sqlstate.empty() &&
        (f.sqlstate.size() != 5 || !std::all_of(f.sqlstate.begin(), f.sqlstate.end(), is_code_char)))
        violation("a SQLSTATE that is not five of [0-9A-Z]", raw, f.sqlstate);
    if (f.sqlstate != d::last_sqlstate_in(f.text))
        violation("the SQLSTATE is not the message's last code", raw, f.sqlstate + " / " + f.text);

    if (f.text.empty()) violation("an empty message", raw, "");
    if (const char c = f.text.back(); c == '\n' || c == ' ' || c == '\t')
        violation("a message ending in white space", raw, f.text);
    std::string kept = without_location_lines(raw);
    while (!kept.empty() && (kept.back() == '\n' || kept.back() == ' ' || kept.back() == '\t')) kept.pop_back();
    if (kept.empty()) kept = "unknown error (libpq gave no message)";
    if (f.text != kept) violation("the message is not the text without its LOCATION lines", raw, f.text);

    const bool transient = needs_password       ? false
                           : f.sqlstate.empty() ? !d::looks_like_configuration_mistake(f.text)
                                                : pqpool::is_transient_sqlstate(f.sqlstate);
    if (f.transient != transient) violation("transience disagrees with the SQLSTATE", raw, f.sqlstate);

    // The prefix the multi-host message drops: a suffix of the text, and the
    // text itself when it does not start with libpq's server prefix.
    const std::string_view rest = d::without_server_prefix(f.text);
    if (rest.size() > f.text.size() || f.text.compare(f.text.size() - rest.size(), rest.size(), rest) != 0)
        violation("without_server_prefix is not a suffix of the text", raw, std::string(rest));
    if (f.text.rfind("connection to server ", 0) != 0 && rest.size() != f.text.size())
        violation("without_server_prefix cut a text that has no server prefix", raw, std::string(rest));
    return 0;
}
