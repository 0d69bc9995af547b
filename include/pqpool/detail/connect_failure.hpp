#pragma once

// Why a connect failed, from libpq's text: the SQLSTATE, whether a retry may
// cure it, and the message that names each host tried; and what an error on
// an open connection says about its server (gone, or no longer the role the
// pool asked for). Pure functions of strings (no libpq call, no I/O), so they
// are unit-tested without a server and fuzzed (tests/fuzz/fuzz_sqlstate.cpp).
//
// libpq's own signals come first where it has them: a missing password is
// told by PQconnectionNeedsPassword() (passed in as `needs_password`), never
// by matching "no password supplied".

#include <pqpool/error.hpp>

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

namespace pqpool::detail {

// libpq reports a failed connect only as text: no PGresult, no SQLSTATE field.
// With PQERRORS_VERBOSE a server's FATAL reads `FATAL:  28P01: password
// authentication failed ...` (severity, two spaces, the code, a colon), so the
// code is taken from there. The severity word may be translated; the shape is
// not.
inline std::string last_sqlstate_in(std::string_view msg) {
    auto code_char = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z'); };
    std::string found;
    for (std::size_t at = msg.find(":  "); at != std::string_view::npos; at = msg.find(":  ", at + 1)) {
        const std::size_t c = at + 3;
        if (c + 7 > msg.size()) break;
        if (std::all_of(msg.begin() + static_cast<std::ptrdiff_t>(c), msg.begin() + static_cast<std::ptrdiff_t>(c + 5),
                        code_char) &&
            msg[c + 5] == ':' && msg[c + 6] == ' ')
            found = std::string(msg.substr(c, 5));
    }
    return found;
}

// Failures with no SQLSTATE that no retry will cure: TLS certificate trouble,
// values libpq rejects, a name that does not resolve. (A missing password is
// told by PQconnectionNeedsPassword.) Any other failure without a SQLSTATE is
// network-level (refused, unreachable, timed out, closed by the server) and
// worth retrying. These are libpq's English texts, for which libpq has no
// other signal; under a translated libpq nothing matches and failures count
// as transient, which costs retries, never a wrong success.
inline bool looks_like_configuration_mistake(std::string_view msg) noexcept {
    constexpr std::string_view markers[] = {
        "certificate",                // verify failed, host name mismatch, unreadable file, client cert refused
        "private key",                // unreadable or world-readable sslkey
        "does not support SSL",       // sslmode=require against a server without TLS
        "GSSAPI encryption required", // gssencmode=require and none possible
        "invalid ",                   // invalid port number / sslmode value / integer value / response
        "could not parse network address",
        "could not match", // port count does not match host count
        "channel binding",
        "authentication method", // an authentication method libpq does not support
        "requirepeer",
        "Name or service not known", // NXDOMAIN; "Temporary failure in name resolution" stays transient
        "No address associated with hostname",
        "unsupported protocol",
    };
    return std::any_of(std::begin(markers), std::end(markers),
                       [&](std::string_view m) { return msg.find(m) != std::string_view::npos; });
}

struct libpq_failure {
    std::string text;     // libpq's message without the LOCATION lines, trimmed
    std::string sqlstate; // of the last server that answered, or empty
    bool transient = true;
};

// Turns libpq's (verbose) connect error into message, SQLSTATE and
// transience. With an sslmode=prefer fallback the message holds one part per
// try; the last server that answered decides.
inline libpq_failure parse_connect_failure(std::string_view raw, bool needs_password) {
    libpq_failure f;
    while (!raw.empty()) {
        const std::size_t nl = raw.find('\n');
        const std::string_view line = raw.substr(0, nl == std::string_view::npos ? raw.size() : nl + 1);
        raw.remove_prefix(line.size());
        // Verbose mode adds the server's source position: noise to a reader.
        if (line.substr(0, 9) == "LOCATION:") continue;
        f.text.append(line);
    }
    while (!f.text.empty() && (f.text.back() == '\n' || f.text.back() == ' ' || f.text.back() == '\t'))
        f.text.pop_back();
    if (f.text.empty()) f.text = "unknown error (libpq gave no message)";
    f.sqlstate = last_sqlstate_in(f.text);
    f.transient = !needs_password &&
                  (f.sqlstate.empty() ? !looks_like_configuration_mistake(f.text) : is_transient_sqlstate(f.sqlstate));
    return f;
}

// libpq's "connection to server at "h" (a), port p failed: " prefix, left out
// where our own label already names the host.
inline std::string_view without_server_prefix(std::string_view text) {
    if (text.substr(0, 21) != "connection to server ") return text;
    const std::size_t line_end = text.find('\n');
    const std::size_t failed = text.find(" failed: ");
    if (failed == std::string_view::npos || failed > line_end) return text;
    return text.substr(failed + 9);
}

// One host of a connect attempt and why it refused.
struct refusal {
    std::string host; // "127.0.0.1:5432"
    std::string why;  // libpq's or our own text, scrubbed
};

// The part of a connect_error that says why: with one host, libpq's message
// as it is (it names the server itself); with several, each host tried and
// why it refused, on one line ("host a:1: timed out after 2000 ms; host
// b:2: FATAL: ...").
inline std::string describe_refusals(const std::vector<refusal>& refusals, bool one_host) {
    if (one_host && refusals.size() == 1) return refusals.front().why;
    std::string out;
    for (const refusal& r : refusals) {
        if (!out.empty()) out += "; ";
        std::string why(without_server_prefix(r.why));
        std::replace(why.begin(), why.end(), '\n', ' ');
        out += "host " + r.host + ": " + why;
    }
    return out;
}

// ---------------------------------------------------------------------------
// Errors on open connections

// What a pool asked of its servers with target_session_attrs.
enum class wanted_role : unsigned char { any, read_write, read_only, primary, standby, prefer_standby };

inline wanted_role wanted_role_of(std::string_view target_session_attrs) noexcept {
    if (target_session_attrs == "read-write") return wanted_role::read_write;
    if (target_session_attrs == "read-only") return wanted_role::read_only;
    if (target_session_attrs == "primary") return wanted_role::primary;
    if (target_session_attrs == "standby") return wanted_role::standby;
    if (target_session_attrs == "prefer-standby") return wanted_role::prefer_standby;
    return wanted_role::any;
}

// Does an error on an open connection say that its server went away? Only
// as the server's last word to this session, a FATAL (or a PANIC, which
// takes the whole server down with any code): class 08 (connection
// exception), 57P01 (admin shutdown, or the backend terminated), 57P02 (crash
// shutdown), 57P03 (cannot connect now). The same codes in an ERROR, which
// leaves the session open, are about some other server: dblink or
// postgres_fdw failing to reach theirs (08001). Other FATALs end this session
// only: 57P05 (idle_session_timeout), 25P03 (an idle transaction's timeout).
inline bool server_gone(std::string_view sqlstate, std::string_view severity) noexcept {
    if (severity == "PANIC") return true;
    if (severity != "FATAL" || sqlstate.size() != 5) return false;
    return sqlstate.substr(0, 2) == "08" || sqlstate == "57P01" || sqlstate == "57P02" || sqlstate == "57P03";
}

// Might the server have turned read-only under a pool that asked for
// read-write servers? A 25006 (read-only transaction) says so only as a
// suspicion: the application may have asked for it itself (BEGIN READ ONLY,
// SET default_transaction_read_only), so it is confirmed with the server
// before anything is done (see connection_watch).
inline bool read_only_suspected(std::string_view sqlstate, wanted_role role) noexcept {
    return sqlstate == "25006" && role == wanted_role::read_write;
}

// Does a server in this state (in hot standby or not; read-only by default
// or not) no longer fit what the pool asked for? The same tests as libpq's
// target_session_attrs check at connect. `was_standby`: the server was a
// standby when the connection was opened (prefer-standby connections that
// found one).
inline bool role_lost(wanted_role role, bool standby, bool default_read_only, bool was_standby) noexcept {
    const bool read_only = standby || default_read_only;
    switch (role) {
    case wanted_role::read_write: return read_only;
    case wanted_role::primary: return standby;
    case wanted_role::read_only: return !read_only;
    case wanted_role::standby: return !standby;
    case wanted_role::prefer_standby: return was_standby && !standby;
    case wanted_role::any: break;
    }
    return false;
}

} // namespace pqpool::detail
