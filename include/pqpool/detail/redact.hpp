#pragma once

// Keeping passwords out of error messages.
//
// libpq's parse errors quote pieces of the input (`missing "=" after "secret"
// in connection info string`), and when PQconninfoParse has just refused the
// input there is no parse result to take the password from. So the password is
// looked for here with a scanner of our own, and quoted fragments are scrubbed
// conservatively: a fragment survives only if it is a connection keyword or
// one of the punctuation marks libpq's own message templates quote. Everything
// here errs towards hiding too much; an unreadable message is a nuisance, a
// password in a log is an incident.
//
// No libpq dependency, so it can be tested on its own.

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace pqpool::detail {

inline constexpr std::string_view redacted_mark = "***";

// Connection keywords of libpq 15 plus the ones later versions added. A quoted
// keyword in a message is harmless and helps the reader ("missing "=" after
// "password""); a keyword a future libpq adds and this list lacks is merely
// redacted.
inline constexpr std::string_view conninfo_keywords[] = {
    "service", "user", "password", "passfile", "channel_binding", "connect_timeout", "dbname", "host", "hostaddr",
    "port", "client_encoding", "options", "application_name", "fallback_application_name", "keepalives",
    "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout", "sslmode",
    "sslcompression", "sslcert", "sslkey", "sslpassword", "sslrootcert", "sslcrl", "sslcrldir", "sslsni",
    "requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version", "gssencmode", "krbsrvname", "gsslib",
    "replication", "target_session_attrs", "authtype", "tty", "require_auth", "sslcertmode", "load_balance_hosts",
    "sslnegotiation", "gssdelegation", "min_protocol_version", "max_protocol_version", "sslkeylogfile",
    "scram_client_key", "scram_server_key"};

// Keywords whose values are secrets. libpq marks these with dispchar "*"; this
// list is for raw input that libpq could not parse.
inline constexpr std::string_view secret_keywords[] = {"password", "sslpassword", "scram_client_key",
                                                       "scram_server_key"};

// What libpq's message templates themselves put in quotes (`missing "=" after`,
// `matching "]"`, `(expected ":" or "/")`): keeping them keeps the message
// readable.
inline constexpr std::string_view template_punctuation[] = {"=", "]", ":", "/"};

inline bool is_conninfo_keyword(std::string_view s) noexcept {
    return std::find(std::begin(conninfo_keywords), std::end(conninfo_keywords), s) != std::end(conninfo_keywords);
}

// Replaces every occurrence of `secret` in `text` with the mark. An empty
// secret is no secret.
inline void scrub_secret(std::string& text, std::string_view secret) {
    if (secret.empty()) return;
    for (std::size_t at = text.find(secret); at != std::string::npos; at = text.find(secret, at)) {
        text.replace(at, secret.size(), redacted_mark);
        at += redacted_mark.size();
    }
}

inline void scrub_secrets(std::string& text, const std::vector<std::string>& secrets) {
    // Longest first, so a secret that contains another is not half-replaced.
    std::vector<const std::string*> order;
    for (const auto& s : secrets) order.push_back(&s);
    std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->size() > b->size(); });
    for (auto* s : order) scrub_secret(text, *s);
}

// A URI's percent-encoding undone; on a malformed escape, the input unchanged
// (the raw form is scrubbed too, so nothing is lost).
inline std::string percent_decode(std::string_view s) {
    auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '%') {
            out += s[i];
            continue;
        }
        if (i + 2 >= s.size()) return std::string(s);
        const int hi = hex(s[i + 1]), lo = hex(s[i + 2]);
        if (hi < 0 || lo < 0) return std::string(s);
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
    }
    return out;
}

inline bool is_secret_keyword(std::string_view s) noexcept {
    return std::find(std::begin(secret_keywords), std::end(secret_keywords), s) != std::end(secret_keywords);
}

// The secret values in a conninfo string or URI, found without libpq's parser
// (which may have just rejected the input). Over-reporting is harmless, so
// every plausible reading of malformed input is included.
inline std::vector<std::string> find_secrets(std::string_view in) {
    std::vector<std::string> out;
    auto add = [&](std::string_view v) {
        if (v.empty()) return;
        out.emplace_back(v);
        if (v.find('%') != std::string_view::npos) out.push_back(percent_decode(v));
    };
    auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };

    const bool uri = in.substr(0, 13) == "postgresql://" || in.substr(0, 11) == "postgres://";
    if (uri) {
        const std::size_t start = in.find("://") + 3;
        // userinfo: libpq ends it at the first '@' before any '/'. A password
        // with a raw '/' or '@' confuses that, so take both the first and the
        // last '@' as possible ends.
        const std::size_t query = in.find('?', start);
        const std::string_view authority = in.substr(start, query == std::string_view::npos ? in.npos : query - start);
        const std::size_t colon = authority.find(':');
        for (std::size_t at : {authority.find('@'), authority.rfind('@')}) {
            if (at == std::string_view::npos || colon == std::string_view::npos || colon > at) continue;
            add(authority.substr(colon + 1, at - colon - 1));
        }
        if (query != std::string_view::npos) {
            std::string_view q = in.substr(query + 1);
            while (!q.empty()) {
                const std::size_t amp = q.find('&');
                const std::string_view param = q.substr(0, amp);
                const std::size_t eq = param.find('=');
                if (eq != std::string_view::npos && is_secret_keyword(percent_decode(param.substr(0, eq))))
                    add(param.substr(eq + 1));
                if (amp == std::string_view::npos) break;
                q.remove_prefix(amp + 1);
            }
        }
        return out;
    }

    // key = value: every secret keyword that starts a word and is followed by
    // '=' (spaces allowed around it, as libpq allows).
    for (std::string_view key : secret_keywords) {
        for (std::size_t at = in.find(key); at != std::string_view::npos; at = in.find(key, at + 1)) {
            if (at > 0 && !is_space(in[at - 1])) continue;
            std::size_t i = at + key.size();
            while (i < in.size() && is_space(in[i])) ++i;
            if (i >= in.size() || in[i] != '=') continue;
            ++i;
            while (i < in.size() && is_space(in[i])) ++i;
            std::string value, raw;
            if (i < in.size() && in[i] == '\'') {
                const std::size_t open = ++i;
                for (; i < in.size() && in[i] != '\''; ++i) {
                    if (in[i] == '\\' && i + 1 < in.size()) ++i;
                    value += in[i];
                }
                raw = std::string(in.substr(open, i - open));
            } else {
                const std::size_t open = i;
                for (; i < in.size() && !is_space(in[i]); ++i) {
                    if (in[i] == '\\' && i + 1 < in.size()) ++i;
                    value += in[i];
                }
                raw = std::string(in.substr(open, i - open));
            }
            add(value);
            if (raw != value) add(raw);
        }
    }
    return out;
}

// Replaces quoted fragments of a libpq message that are neither connection
// keywords nor libpq's own template punctuation. Once a fragment is redacted,
// the rest of its line up to the line's last quote goes with it: the fragment
// may itself contain quote characters, and pairing quotes inside user input
// cannot be trusted. An unmatched quote redacts to the end of the line.
// Sets `changed` when anything was replaced.
inline std::string scrub_quoted_fragments(std::string_view text, bool& changed) {
    std::string out;
    out.reserve(text.size());
    changed = false;
    while (!text.empty()) {
        const std::size_t nl = text.find('\n');
        std::string_view line = text.substr(0, nl == std::string_view::npos ? text.size() : nl + 1);
        text.remove_prefix(line.size());
        const std::size_t last_quote = line.rfind('"');
        std::size_t pos = 0;
        for (;;) {
            const std::size_t open = line.find('"', pos);
            if (open == std::string_view::npos) {
                out.append(line.substr(pos));
                break;
            }
            const std::size_t close = line.find('"', open + 1);
            if (close != std::string_view::npos) {
                const std::string_view inner = line.substr(open + 1, close - open - 1);
                const bool keep = is_conninfo_keyword(inner) ||
                                  std::find(std::begin(template_punctuation), std::end(template_punctuation),
                                            inner) != std::end(template_punctuation);
                if (keep) {
                    out.append(line.substr(pos, close + 1 - pos));
                    pos = close + 1;
                    continue;
                }
            }
            changed = true;
            out.append(line.substr(pos, open + 1 - pos));
            out.append(redacted_mark);
            if (close == std::string_view::npos) {
                // Unmatched: everything after it goes, but keep the newline.
                if (!line.empty() && line.back() == '\n') out += '\n';
            } else {
                out.append(line.substr(last_quote));
            }
            break;
        }
    }
    return out;
}

// A libpq parse error about `conninfo`, fit for an exception message.
inline std::string redact_parse_error(std::string_view message, std::string_view conninfo) {
    bool changed = false;
    std::string out = scrub_quoted_fragments(message, changed);
    scrub_secrets(out, find_secrets(conninfo));
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ' || out.back() == '\t' || out.back() == '\r'))
        out.pop_back();
    if (changed) out += " (quoted parts of the input are shown as *** so that no password reaches a log)";
    return out;
}

} // namespace pqpool::detail
