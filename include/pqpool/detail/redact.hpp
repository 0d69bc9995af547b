#pragma once

// Keeping passwords out of error messages.
//
// libpq's parse errors quote pieces of the input (`missing "=" after "secret"
// in connection info string`), and when PQconninfoParse has just refused the
// input there is no parse result to take the password from. So the password is
// looked for here with a scanner of our own, and quoted fragments of a parse
// error are scrubbed conservatively: a fragment survives only if it is a
// connection keyword or one of the punctuation marks libpq's own message
// templates quote.
//
// Elsewhere (libpq's and the server's text about a failed connect) a secret is
// replaced only where it stands as a whole token: a short password such as
// "pool" must not turn "pqpool" into "pq***". Our own text is never scrubbed;
// it holds no secret by construction (conninfo.hpp rejects URIs whose password
// libpq would carve into other fields).
//
// No libpq dependency, so it can be tested on its own: the keyword lists come
// from libpq through conninfo.hpp.

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace pqpool::detail {

inline constexpr std::string_view redacted_mark = "***";

// The connection keywords libpq knows, and those whose values are secrets
// (libpq marks them with dispchar "*").
struct conninfo_vocabulary {
    std::vector<std::string> keywords;
    std::vector<std::string> secret_keywords;

    bool is_keyword(std::string_view s) const noexcept {
        return std::find(keywords.begin(), keywords.end(), s) != keywords.end();
    }
    bool is_secret(std::string_view s) const noexcept {
        return std::find(secret_keywords.begin(), secret_keywords.end(), s) != secret_keywords.end();
    }
};

// What libpq's message templates themselves put in quotes (`missing "=" after`,
// `matching "]"`, `(expected ":" or "/")`): keeping them keeps the message
// readable.
inline constexpr std::string_view template_punctuation[] = {"=", "]", ":", "/"};

// Part of a token: a letter, a digit, '_' or any byte of a multibyte UTF-8
// character.
constexpr bool is_token_char(char c) noexcept {
    const auto u = static_cast<unsigned char>(c);
    return (u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || u == '_' || u >= 0x80;
}

// Replaces each occurrence of `secret` in `text` that stands as a whole token:
// not one glued to letters or digits on a side where the secret itself starts
// or ends with one. An empty secret is no secret.
inline void scrub_token(std::string& text, std::string_view secret) {
    if (secret.empty()) return;
    const bool word_start = is_token_char(secret.front()), word_end = is_token_char(secret.back());
    for (std::size_t at = text.find(secret); at != std::string::npos;) {
        const std::size_t end = at + secret.size();
        const bool glued = (word_start && at > 0 && is_token_char(text[at - 1])) ||
                           (word_end && end < text.size() && is_token_char(text[end]));
        if (glued) {
            at = text.find(secret, at + 1);
            continue;
        }
        text.replace(at, secret.size(), redacted_mark);
        at = text.find(secret, at + redacted_mark.size());
    }
}

inline void scrub_tokens(std::string& text, const std::vector<std::string>& secrets) {
    // Longest first, so a secret that contains another is not half-replaced.
    std::vector<const std::string*> order;
    for (const auto& s : secrets) order.push_back(&s);
    std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->size() > b->size(); });
    for (auto* s : order) scrub_token(text, *s);
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

constexpr bool is_conninfo_space(char c) noexcept {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

inline bool is_uri(std::string_view in) noexcept {
    return in.substr(0, 13) == "postgresql://" || in.substr(0, 11) == "postgres://";
}

// The values of the parameters in a URI's query (the text after a '?') that
// name a secret keyword, as written (percent-encoded).
inline std::vector<std::string_view> secret_query_values(std::string_view params, const conninfo_vocabulary& vocab) {
    std::vector<std::string_view> out;
    while (!params.empty()) {
        const std::size_t amp = params.find('&');
        const std::string_view param = params.substr(0, amp);
        const std::size_t eq = param.find('=');
        if (eq != std::string_view::npos && vocab.is_secret(percent_decode(param.substr(0, eq))))
            out.push_back(param.substr(eq + 1));
        if (amp == std::string_view::npos) break;
        params.remove_prefix(amp + 1);
    }
    return out;
}

// The secret values in a conninfo string or URI, found without libpq's parser
// (which may have just rejected the input). Over-reporting is harmless, so
// every plausible reading of malformed input is included.
inline std::vector<std::string> find_secrets(std::string_view in, const conninfo_vocabulary& vocab) {
    std::vector<std::string> out;
    auto add = [&](std::string_view v) {
        if (v.empty()) return;
        out.emplace_back(v);
        if (v.find('%') != std::string_view::npos) out.push_back(percent_decode(v));
    };

    if (is_uri(in)) {
        const std::string_view rest = in.substr(in.find("://") + 3);
        // userinfo: libpq ends it at the first '@' before any '/', but a
        // password with a raw '/', '@' or '?' confuses any reading, so every
        // '@' is taken as a possible end, and the first ':' (a user name
        // cannot hold one unencoded) as the start.
        const std::size_t colon = rest.find(':');
        for (std::size_t at = rest.find('@'); at != std::string_view::npos; at = rest.find('@', at + 1))
            if (colon != std::string_view::npos && colon < at) add(rest.substr(colon + 1, at - colon - 1));
        // Query parameters naming a secret keyword.
        for (std::size_t q = rest.find('?'); q != std::string_view::npos; q = rest.find('?', q + 1))
            for (std::string_view v : secret_query_values(rest.substr(q + 1), vocab)) add(v);
        return out;
    }

    // key = value: every secret keyword that starts a word and is followed by
    // '=' (spaces allowed around it, as libpq allows).
    for (const std::string& key : vocab.secret_keywords) {
        for (std::size_t at = in.find(key); at != std::string_view::npos; at = in.find(key, at + 1)) {
            if (at > 0 && !is_conninfo_space(in[at - 1])) continue;
            std::size_t i = at + key.size();
            while (i < in.size() && is_conninfo_space(in[i])) ++i;
            if (i >= in.size() || in[i] != '=') continue;
            ++i;
            while (i < in.size() && is_conninfo_space(in[i])) ++i;
            std::string value;
            const bool quoted = i < in.size() && in[i] == '\'';
            const std::size_t open = quoted ? ++i : i;
            for (; i < in.size() && (quoted ? in[i] != '\'' : !is_conninfo_space(in[i])); ++i) {
                if (in[i] == '\\' && i + 1 < in.size()) ++i;
                value += in[i];
            }
            const std::string_view raw = in.substr(open, i - open);
            add(value);
            if (raw != value) add(raw);
        }
    }
    return out;
}

// Does one parsed value of a non-secret keyword hold what reads as a secret's
// setting: a secret keyword and '=' (blanks allowed around it) that starts
// the value or follows a blank, a '?' or a '&', or a URI with a password?
// Then libpq read a password as part of that value (see parse_conninfo).
inline bool holds_secret_setting(std::string_view value, const conninfo_vocabulary& vocab) {
    if (is_uri(value) && !find_secrets(value, vocab).empty()) return true;
    for (const std::string& key : vocab.secret_keywords) {
        for (std::size_t at = value.find(key); at != std::string_view::npos; at = value.find(key, at + 1)) {
            if (at > 0 && !is_conninfo_space(value[at - 1]) && value[at - 1] != '?' && value[at - 1] != '&') continue;
            std::size_t i = at + key.size();
            while (i < value.size() && is_conninfo_space(value[i])) ++i;
            if (i < value.size() && value[i] == '=') return true;
        }
    }
    return false;
}

// Replaces quoted fragments of a libpq message that are neither connection
// keywords nor libpq's own template punctuation. Once a fragment is redacted,
// the rest of the message up to its last quote goes with it: the fragment
// may itself contain quote characters, and pairing quotes inside user input
// cannot be trusted. Nor can lines: libpq quotes a value whole, newlines
// included. An unmatched quote redacts to the end of the message. Sets
// `changed` when anything was replaced.
inline std::string scrub_quoted_fragments(std::string_view text, const conninfo_vocabulary& vocab, bool& changed) {
    std::string out;
    out.reserve(text.size());
    changed = false;
    const std::size_t last_quote = text.rfind('"');
    std::size_t pos = 0;
    for (;;) {
        const std::size_t open = text.find('"', pos);
        if (open == std::string_view::npos) {
            out.append(text.substr(pos));
            return out;
        }
        const std::size_t close = text.find('"', open + 1);
        if (close != std::string_view::npos) {
            const std::string_view inner = text.substr(open + 1, close - open - 1);
            const bool keep = vocab.is_keyword(inner) ||
                              std::find(std::begin(template_punctuation), std::end(template_punctuation), inner) !=
                                  std::end(template_punctuation);
            if (keep) {
                out.append(text.substr(pos, close + 1 - pos));
                pos = close + 1;
                continue;
            }
        }
        changed = true;
        out.append(text.substr(pos, open + 1 - pos));
        out.append(redacted_mark);
        if (close != std::string_view::npos) out.append(text.substr(last_quote));
        return out;
    }
}

// A libpq parse error about `conninfo`, fit for an exception message.
inline std::string redact_parse_error(std::string_view message, std::string_view conninfo,
                                      const conninfo_vocabulary& vocab) {
    bool changed = false;
    std::string out = scrub_quoted_fragments(message, vocab, changed);
    scrub_tokens(out, find_secrets(conninfo, vocab));
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ' || out.back() == '\t' || out.back() == '\r'))
        out.pop_back();
    if (changed) out += " (quoted parts of the input are shown as *** so that no password reaches a log)";
    return out;
}

} // namespace pqpool::detail
