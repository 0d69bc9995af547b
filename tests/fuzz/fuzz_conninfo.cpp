// Fuzz target: connection strings and URIs holding a marked password, through
// libpq_connector's constructor and, when it accepts them, through the path
// that turns libpq's text about a failed connect into a connect_error. No
// message may hold the password or a fragment of it (see check_clean).
//
// Input (text, so that the seeds in corpus/fuzz_conninfo/ are readable):
//
//     <mode><template>\n<password>
//
// The template is a conninfo or URI with "{}" where the password goes (none:
// " password={}" or "?password={}" is appended). The password is the rest of
// the input, up to 64 bytes, with every ASCII letter mapped onto the marker
// letters JKQVWXZ (those stay as they are); in the template, the marker
// letters become lower case. So a marker in a message came from the
// password: none of pqpool's or libpq's own texts has three bytes in a row
// drawn from markers, digits, punctuation and bytes from 0x80 up with a
// marker among them. Mode, how the password is written: in key=value form
//   q  quoted: '...' with ' and \ escaped
//   e, p  quoted only when it needs to be (space, quote, backslash, empty)
//   r  raw, as it is
// and in a URI
//   q, e  percent-encoded, every byte but A-Z a-z 0-9 - . _ ~
//   p  only / @ ? # % & and space encoded
//   r  raw
// Any other first byte picks a mode by its value and counts as template.
//
// The password stands where a user means a password: after "password=" or
// "sslpassword=" starting a word, in a URI's user-info ("postgresql://user:"
// before it, '@' right after it) or in its query ("?password=" or
// "&password=" before it, '&' or nothing after it; a '&' instead of the
// '?' counts too). Elsewhere (the fuzzer moved the "{}"), the input still
// runs, for crashes, but the password is not looked for. Nor is it where the
// text means something else by the rules of its form, as docs/guarantees.md
// documents: a raw key=value password holding white space, and a raw URI
// query password holding '&'.
//
// A violation prints the fragment, the conninfo, the password and the
// message, then traps: libFuzzer saves the input as a crash file.

#include "printable.hpp"

#include <pqpool/connector/libpq.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

extern "C" char** environ;

// The connector's failure-message path, driven with texts written here
// instead of a server's (declared in libpq.hpp for this).
struct pqpool::detail::libpq_connector_access {
    using connector = pqpool::libpq_connector;

    static const std::vector<connect_target>& plan(const connector& c) { return c.plan_; }

    // The connect_error message when the hosts fail with `texts`, one per
    // target tried; with `timed_out`, connect()'s message when the deadline
    // came after those refusals.
    static std::string failure(const connector& c, const std::vector<std::string>& texts, bool needs_password,
                               bool timed_out) {
        connector::attempt a;
        a.state_ = std::make_unique<connector::state>();
        a.state_->started = connector::clock::now();
        for (const std::string& text : texts) {
            if (a.state_->target >= c.plan_.size()) break;
            c.refuse_with_libpq_text(*a.state_, text, needs_password);
        }
        try {
            if (timed_out) c.fail_timed_out(a);
            c.fail_refused(a);
        } catch (const pqpool::connect_error& e) {
            return e.what();
        }
    }
};

namespace {

using pqpool::detail::connect_target;
using access = pqpool::detail::libpq_connector_access;
using pqpool::fuzz::printable;

constexpr std::string_view marker_letters = "JKQVWXZ";
constexpr std::size_t max_template = 512, max_password = 64;

bool is_marker(char c) { return marker_letters.find(c) != std::string_view::npos; }

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string quote_kv(std::string_view v) {
    std::string out = "'";
    for (char c : v) {
        if (c == '\'' || c == '\\') out += '\\';
        out += c;
    }
    return out + "'";
}

std::string percent_encode(std::string_view v, std::string_view only = {}) {
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string out;
    for (char c : v) {
        const auto u = static_cast<unsigned char>(c);
        const bool unreserved = (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || (u >= '0' && u <= '9') ||
                                c == '-' || c == '.' || c == '_' || c == '~';
        const bool encode = only.empty() ? !unreserved : only.find(c) != std::string_view::npos;
        if (!encode) {
            out += c;
            continue;
        }
        out += '%';
        out += hex[u >> 4];
        out += hex[u & 15];
    }
    return out;
}

// libpq's reading of an unquoted key=value word: a backslash takes the next
// byte as it is.
std::string unescape_raw(std::string_view v) {
    std::string out;
    for (std::size_t i = 0; i < v.size(); ++i) {
        if (v[i] == '\\' && i + 1 < v.size()) ++i;
        out += v[i];
    }
    return out;
}

// %XX escapes decoded where they are well-formed, the rest kept.
std::string lenient_percent_decode(std::string_view v) {
    auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); };
    std::string out;
    for (std::size_t i = 0; i < v.size(); ++i) {
        if (v[i] == '%' && i + 2 < v.size() && hex(v[i + 1]) && hex(v[i + 2])) {
            out += static_cast<char>(std::stoi(std::string(v.substr(i + 1, 2)), nullptr, 16));
            i += 2;
        } else {
            out += v[i];
        }
    }
    return out;
}

// ' and \ escaped with a backslash, as in a quoted key=value value.
std::string escape_kv(std::string_view v) {
    std::string q = quote_kv(v);
    return q.substr(1, q.size() - 2);
}

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }
bool ends_with(std::string_view s, std::string_view p) {
    return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}

// Does `prefix` end with a secret keyword that starts a word, then '=' (white
// space allowed around it, as libpq allows)?
bool after_kv_secret_keyword(std::string_view prefix) {
    while (!prefix.empty() && is_space(prefix.back())) prefix.remove_suffix(1);
    if (prefix.empty() || prefix.back() != '=') return false;
    prefix.remove_suffix(1);
    while (!prefix.empty() && is_space(prefix.back())) prefix.remove_suffix(1);
    for (std::string_view key : {"sslpassword", "password"}) {
        if (!ends_with(prefix, key)) continue;
        const std::size_t at = prefix.size() - key.size();
        if (at == 0 || is_space(prefix[at - 1])) return true;
    }
    return false;
}

enum class place { none, keyword_value, uri_userinfo, uri_query };

place where(std::string_view prefix, std::string_view suffix) {
    if (!pqpool::detail::is_uri(prefix)) return after_kv_secret_keyword(prefix) ? place::keyword_value : place::none;
    const std::string_view rest = prefix.substr(prefix.find("://") + 3);
    if (!rest.empty() && rest.back() == ':' && rest.find_first_of(":/") == rest.size() - 1 && starts_with(suffix, "@"))
        return place::uri_userinfo;
    // A '&' where the '?' should be (the query's first parameter) still
    // means a password.
    if ((ends_with(rest, "?password=") || ends_with(rest, "&password=") || ends_with(rest, "?sslpassword=") ||
         ends_with(rest, "&sslpassword=")) &&
        (suffix.empty() || suffix.front() == '&'))
        return place::uri_query;
    return place::none;
}

struct sample {
    std::string conninfo;
    std::vector<std::string> forms; // the password as meant, as written, as libpq reads it
    std::vector<std::string> rest;  // the conninfo without the password, as messages may show it
    bool checked = false;           // does the password stand where it must not leak from?
    bool timeout_option = false;
};

sample build(std::string_view in) {
    sample s;
    char mode = 'q';
    if (!in.empty()) {
        const std::string_view modes = "qepr";
        if (modes.find(in.front()) != std::string_view::npos) {
            mode = in.front();
            in.remove_prefix(1);
        } else {
            mode = modes[static_cast<unsigned char>(in.front()) % 4];
        }
    }
    const std::size_t nl = in.find('\n');
    std::string templ(in.substr(0, std::min(nl, max_template)));
    for (char& c : templ)
        if (is_marker(c)) c = static_cast<char>(c - 'A' + 'a');
    std::string password(nl == std::string_view::npos ? std::string_view{} : in.substr(nl + 1, max_password));
    for (char& c : password) {
        const auto u = static_cast<unsigned char>(c);
        if (((u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z')) && !is_marker(c))
            c = marker_letters[u % marker_letters.size()];
    }
    // One bit of the password's length: a connect_timeout in libpq_options
    // too (the conninfo's must then agree with it).
    s.timeout_option = password.size() % 2 == 1;

    std::size_t hole = templ.find("{}");
    if (hole == std::string::npos) {
        if (pqpool::detail::is_uri(templ))
            templ += templ.find('?') == std::string::npos ? "?password={}" : "&password={}";
        else
            templ += " password={}";
        hole = templ.find("{}");
    }
    const std::string prefix = templ.substr(0, hole), suffix = templ.substr(hole + 2);
    const place p = where(prefix, suffix);

    std::string written, read_by_libpq = password;
    if (p == place::uri_userinfo || p == place::uri_query) {
        if (mode == 'r') {
            written = password;
            read_by_libpq = pqpool::detail::percent_decode(password);
        } else {
            written = percent_encode(password, mode == 'p' ? "/@?#%& " : "");
        }
    } else if (mode == 'q') {
        written = quote_kv(password);
    } else if (mode == 'r') {
        written = password;
        read_by_libpq = unescape_raw(password);
    } else {
        written = pqpool::detail::quote_conninfo_value(password);
    }

    s.conninfo = prefix + written + suffix;
    // The rest as written, percent-decoded (URI parts), and escaped as
    // description() quotes values: what a message may show of it.
    const std::string rest = prefix + suffix, decoded = lenient_percent_decode(rest);
    s.rest = {rest, decoded, escape_kv(rest), escape_kv(decoded)};
    for (const std::string& f : {password, written, read_by_libpq})
        if (std::find(s.forms.begin(), s.forms.end(), f) == s.forms.end()) s.forms.push_back(f);
    const bool has_space = std::any_of(password.begin(), password.end(), is_space);
    s.checked = p != place::none && std::none_of(decoded.begin(), decoded.end(), is_marker) &&
                !(mode == 'r' && p == place::keyword_value && has_space) &&
                !(mode == 'r' && p == place::uri_query && password.find('&') != std::string::npos);
    return s;
}

[[noreturn]] void violation(const sample& s, std::string_view what, std::string_view message,
                            std::string_view fragment) {
    std::fprintf(stderr,
                 "\nfuzz_conninfo: a piece of the password reached a message\n"
                 "  fragment: \"%s\"\n  conninfo: \"%s\"\n  password: \"%s\"\n  %s: \"%s\"\n",
                 printable(fragment).c_str(), printable(s.conninfo).c_str(), printable(s.forms.front()).c_str(),
                 std::string(what).c_str(), printable(message).c_str());
    __builtin_trap();
}

// The existing tests' definition (tests/integration/connector_password_test.cpp):
// a fragment is a substring of the password, 3 bytes or more, that the rest
// of the conninfo does not also hold (as written, percent-decoded or escaped
// for quoting); the word "password" of our own messages does not count. Here
// a fragment must also hold a marker byte (see above).
void check_clean(const sample& s, std::string_view what, const std::string& message) {
    if (!s.checked) return;
    std::string text = message;
    for (std::size_t at = text.find("password"); at != std::string::npos; at = text.find("password", at))
        text.replace(at, 8, "|");
    for (const std::string& form : s.forms) {
        for (std::size_t i = 0; i + 3 <= form.size(); ++i) {
            // Longer fragments from i can only be in the message if shorter ones are.
            for (std::size_t n = 3; i + n <= form.size(); ++n) {
                const std::string_view f = std::string_view(form).substr(i, n);
                if (text.find(f) == std::string::npos) break;
                if (std::none_of(f.begin(), f.end(), is_marker)) continue;
                if (std::any_of(s.rest.begin(), s.rest.end(),
                                [&](const std::string& r) { return r.find(f) != std::string::npos; }))
                    continue;
                violation(s, what, message, f);
            }
        }
    }
}

std::string value_of(const connect_target& t, std::string_view keyword) {
    for (std::size_t i = 0; i < t.keywords.size(); ++i)
        if (t.keywords[i] == keyword) return t.values[i];
    return {};
}

// What libpq 15 says about a failed connect to `t`, quoting its host, port,
// user and database as libpq does. `kind` picks one of its messages; the
// network-level ones let the next host be tried. The last kind quotes the
// password too, as libpq never does: the scrubbing of libpq's text is
// insurance, and this keeps it tested.
std::string libpq_text(const connect_target& t, unsigned kind) {
    const std::string host = value_of(t, "host"), addr = value_of(t, "hostaddr");
    const std::string shown_host = host.empty() ? addr : host;
    const std::string port = value_of(t, "port").empty() ? "5432" : value_of(t, "port");
    const std::string user = value_of(t, "user"), db = value_of(t, "dbname");
    const std::string server = shown_host.empty() || shown_host.front() == '/'
                                   ? "connection to server on socket \"" + shown_host + "/.s.PGSQL." + port + "\""
                                   : "connection to server at \"" + shown_host + "\" (" +
                                         (addr.empty() ? "127.0.0.1" : addr) + "), port " + port;
    switch (kind % 9) {
    case 0: return "could not translate host name \"" + host + "\" to address: Name or service not known\n";
    case 1:
        return server + " failed: Connection refused\n\tIs the server running on that host and accepting TCP/IP "
                        "connections?\n";
    case 2:
        return server + " failed: FATAL:  28P01: password authentication failed for user \"" + user +
               "\"\nLOCATION:  auth_failed, auth.c:335\n";
    case 3: return server + " failed: FATAL:  3D000: database \"" + db + "\" does not exist\nLOCATION:  x.c:1\n";
    case 4:
        return server + " failed: FATAL:  28000: no pg_hba.conf entry for host \"" + addr + "\", user \"" + user +
               "\", database \"" + db + "\", no encryption\n";
    case 5: return "invalid port number: \"" + port + "\"\n";
    case 6:
        return server + " failed: server certificate for \"" + host + "\" does not match host name \"" + host + "\"\n";
    case 7: return "could not parse network address \"" + addr + "\": Name or service not known\n";
    default:
        return server + " failed: FATAL:  28P01: password authentication failed for user \"" + user +
               "\"\nDETAIL:  Password \"" + value_of(t, "password") + "\" does not match.\n";
    }
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    // libpq's defaults must not come from this process's environment
    // (PGHOST, PGSERVICE, ...): the same input must do the same thing.
    std::vector<std::string> names;
    for (char** e = environ; *e; ++e)
        if (std::strncmp(*e, "PG", 2) == 0) names.emplace_back(*e, std::strcspn(*e, "="));
    for (const std::string& n : names) ::unsetenv(n.c_str());
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const sample s = build(std::string_view(reinterpret_cast<const char*>(data), size));
    pqpool::libpq_options options;
    if (s.timeout_option) options.connect_timeout = std::chrono::seconds{3};
    std::optional<pqpool::libpq_connector> c;
    try {
        c.emplace(s.conninfo, options);
    } catch (const pqpool::config_error& e) {
        check_clean(s, "config_error", e.what());
        return 0;
    }
    check_clean(s, "description()", c->description());

    // Every host fails, each its own way; then connect()'s deadline comes
    // after the first refusal.
    unsigned kind = 0;
    for (std::size_t i = 0; i < size; ++i) kind = kind * 31 + data[i];
    std::vector<std::string> texts;
    for (std::size_t i = 0; i < access::plan(*c).size(); ++i)
        texts.push_back(libpq_text(access::plan(*c)[i], kind + static_cast<unsigned>(i)));
    for (bool needs_password : {false, true}) {
        check_clean(s, "connect_error", access::failure(*c, texts, needs_password, false));
        check_clean(s, "connect_error (timed out)", access::failure(*c, {texts.front()}, needs_password, true));
    }
    return 0;
}
