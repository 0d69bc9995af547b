#pragma once

// The connection string, taken apart and checked once, when a connector is
// built: libpq's parse, the checks libpq would otherwise only make at every
// connect (and report as a failed connect, again and again), the host list cut
// into one libpq connection per host, the per-host connect timeout, and the
// TCP defaults. No network I/O: everything here can be tested without a server.

#include <pqpool/detail/check.hpp>
#include <pqpool/detail/redact.hpp>
#include <pqpool/error.hpp>

#include <libpq-fe.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pqpool::detail {

struct conninfo_options_deleter {
    void operator()(PQconninfoOption* o) const noexcept { PQconninfoFree(o); }
};
using conninfo_options = std::unique_ptr<PQconninfoOption, conninfo_options_deleter>;

// libpq's keywords and which of them are secret, from PQconninfoParse(""):
// unlike PQconndefaults it reads neither the environment nor a service file,
// so it cannot fail on a bad one. A newer libpq brings its new keywords along.
inline const conninfo_vocabulary& libpq_vocabulary() {
    static const conninfo_vocabulary vocabulary = [] {
        conninfo_vocabulary v;
        char* err = nullptr;
        const conninfo_options all{PQconninfoParse("", &err)};
        PQfreemem(err);
        for (const PQconninfoOption* o = all.get(); o && o->keyword; ++o) {
            v.keywords.emplace_back(o->keyword);
            if (o->dispchar && o->dispchar[0] == '*') v.secret_keywords.emplace_back(o->keyword);
        }
        // Only when libpq could not allocate its option list: the secret
        // keywords libpq has had since 13, so that raw input is still scanned.
        if (v.secret_keywords.empty()) v.secret_keywords = {"password", "sslpassword"};
        return v;
    }();
    return vocabulary;
}

struct conninfo_value {
    std::string keyword, value;
};

// A keyword's value among `values`, or null.
inline const std::string* find_value(const std::vector<conninfo_value>& values, std::string_view keyword) noexcept {
    for (const auto& v : values)
        if (v.keyword == keyword) return &v.value;
    return nullptr;
}

// What the user gave, as libpq parsed it.
struct parsed_conninfo {
    std::vector<conninfo_value> given; // non-empty values only, in libpq's keyword order
    std::vector<std::string> secrets;  // every form of every secret in the input, to scrub from libpq's text

    const std::string* get(std::string_view keyword) const noexcept { return find_value(given, keyword); }
};

// What libpq would take from the environment (PGHOST, PGPORT, PGCONNECT_TIMEOUT,
// PGTARGETSESSIONATTRS, ...) and its compiled-in defaults, for the keywords
// the user left out.
struct libpq_defaults {
    std::vector<conninfo_value> values;
    std::vector<std::string> secrets; // PGPASSWORD and the like

    const std::string* get(std::string_view keyword) const noexcept { return find_value(values, keyword); }

    static libpq_defaults read() {
        libpq_defaults d;
        // Null when a service file named by PGSERVICE is broken: then libpq
        // itself fails each connect and says why; we assume no defaults.
        const conninfo_options defaults{PQconndefaults()};
        for (const PQconninfoOption* o = defaults.get(); o && o->keyword; ++o) {
            if (!o->val || !*o->val) continue;
            d.values.push_back({o->keyword, o->val});
            if (o->dispchar && o->dispchar[0] == '*') d.secrets.emplace_back(o->val);
        }
        return d;
    }
};

// ---------------------------------------------------------------------------
// Parsing

[[noreturn]] inline void fail_conninfo(const std::string& what) {
    throw config_error("pqpool: invalid connection string: " + what);
}

// libpq reads a URI's user-info up to the first '@' that comes before any
// '/'. A password holding an unencoded '/' or '@' therefore ends up, in
// pieces, in the host, the port or the database name, and from there in
// every message that names them ("invalid port", "could not translate host
// name", "database ... does not exist"). Such a URI is refused here with a
// message that quotes nothing of it.
//
// Detected: an '@' after the one libpq took as the end of the user-info (or
// anywhere before the query, when libpq found none); and, when libpq found
// no user-info although an '@' follows, a "port" that is not a number (what
// a password with '?' before its '/' turns into); and a query parameter
// naming a secret keyword inside what libpq took as the user-info (with no
// '/' before it, the '@' of a query's password ends the user-info:
// `postgresql://h?password=a@b/c` has the user "h?password=a", the host "b"
// and the database "c"). Not detectable: a password
// that carries an unencoded '&' followed by something that reads as a query
// parameter of a real keyword (`?password=a&sslmode=require`): that is a
// valid URI meaning something else.
inline void check_uri_password_encoding(std::string_view input, const conninfo_vocabulary& vocab) {
    if (!is_uri(input)) return;
    const std::string_view rest = input.substr(input.find("://") + 3);
    const std::size_t stop = rest.find_first_of("@/");
    const bool has_userinfo = stop != std::string_view::npos && rest[stop] == '@';
    const std::size_t after = has_userinfo ? stop + 1 : 0;
    const std::string_view before_query = rest.substr(after, rest.find('?', after) - after);
    bool carved = before_query.find('@') != std::string_view::npos;
    if (!carved && has_userinfo) {
        const std::string_view userinfo = rest.substr(0, stop);
        for (std::size_t q = userinfo.find('?'); !carved && q != std::string_view::npos; q = userinfo.find('?', q + 1))
            for (std::string_view v : secret_query_values(userinfo.substr(q + 1), vocab)) carved = carved || !v.empty();
    }
    if (!carved && !has_userinfo && rest.find('@') != std::string_view::npos) {
        std::string_view netloc = rest.substr(0, rest.find_first_of("/?"));
        while (!carved && !netloc.empty()) {
            const std::size_t comma = netloc.find(',');
            const std::string_view item = netloc.substr(0, comma);
            // "[::1]:5432": the port follows the bracket.
            const std::size_t bracket = item.empty() || item.front() != '[' ? 0 : item.find(']');
            const std::size_t colon = bracket == std::string_view::npos ? bracket : item.find(':', bracket);
            if (colon != std::string_view::npos) {
                const std::string_view port = item.substr(colon + 1);
                carved = port.find_first_not_of("0123456789") != std::string_view::npos;
            }
            netloc.remove_prefix(comma == std::string_view::npos ? netloc.size() : comma + 1);
        }
    }
    if (carved)
        fail_conninfo("the URI's password contains a character that must be percent-encoded (/ as %2F, @ as %40, "
                      "? as %3F, # as %23, % as %25, space as %20), or libpq reads parts of it as the host, port "
                      "or database name; if an '@' belongs to the database name, write it as %40 (nothing of the "
                      "URI is shown here, so that no password reaches a log)");
}

// Parses a conninfo string or URI as libpq does, after the checks above.
// Throws config_error; no message quotes a secret.
inline parsed_conninfo parse_conninfo(std::string_view input_view) {
    const conninfo_vocabulary& vocab = libpq_vocabulary();
    const std::string input(input_view);
    parsed_conninfo out;
    // Anything libpq could echo is scrubbed, including forms of the password
    // libpq itself would never have parsed.
    out.secrets = find_secrets(input, vocab);
    if (input.find('\0') != std::string::npos) fail_conninfo("it contains a NUL character");
    check_uri_password_encoding(input, vocab);

    char* err = nullptr;
    const conninfo_options parsed{PQconninfoParse(input.c_str(), &err)};
    if (!parsed) {
        std::string why = err ? redact_parse_error(err, input, vocab) : std::string("out of memory");
        PQfreemem(err);
        fail_conninfo(why);
    }
    for (const PQconninfoOption* o = parsed.get(); o->keyword; ++o) {
        if (!o->val || !*o->val) continue;
        const bool secret = o->dispchar && o->dispchar[0] == '*';
        // libpq skips the blank after '=', so `host= password=x` gives the
        // host the value "password=x"; an open quote (`sslmode='require
        // password=x`) runs on the same way, and so does a URI's query begun
        // with '&' instead of '?' (the database "db&password=x"). Such a
        // value would be quoted by every message about it (and a host list
        // split at its commas, out of reach of scrubbing), so it is refused,
        // quoting nothing.
        if (!secret && holds_secret_setting(o->val, vocab))
            fail_conninfo("the value of " + std::string(o->keyword) +
                          " holds a password setting (is a value left empty before it, or a quote left open?); "
                          "nothing of it is shown here, so that no password reaches a log");
        out.given.push_back({o->keyword, o->val});
        if (secret) out.secrets.emplace_back(o->val);
    }
    return out;
}

// ---------------------------------------------------------------------------
// Checking values libpq would only check at each connect

// Quoted for a message: values of non-secret keywords only.
inline std::string quoted(std::string_view v) { return "\"" + std::string(v) + "\""; }

// libpq's reading of an integer option (strtol, surrounding spaces allowed,
// nothing else, within int).
inline std::optional<int> parse_libpq_int(std::string_view text) {
    const std::string s(text);
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(s.c_str(), &end, 10);
    if (end == s.c_str() || errno != 0 || v < INT_MIN || v > INT_MAX) return std::nullopt;
    while (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r' || *end == '\f' || *end == '\v') ++end;
    if (*end != '\0') return std::nullopt;
    return static_cast<int>(v);
}

// The keywords whose values are one of a few words, as libpq 15 defines them.
struct word_keyword {
    std::string_view keyword;
    std::span<const std::string_view> allowed;
};
inline constexpr std::string_view sslmodes[] = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"};
inline constexpr std::string_view three_modes[] = {"disable", "prefer", "require"};
inline constexpr std::string_view session_attrs[] = {"any",     "read-write", "read-only",
                                                     "primary", "standby",    "prefer-standby"};
inline constexpr std::string_view tls_versions[] = {"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"};
inline constexpr word_keyword word_keywords[] = {
    {"sslmode", sslmodes},
    {"gssencmode", three_modes},
    {"channel_binding", three_modes},
    {"target_session_attrs", session_attrs},
    {"ssl_min_protocol_version", tls_versions},
    {"ssl_max_protocol_version", tls_versions},
};

// The integer keywords and what makes sense for each.
struct integer_keyword {
    std::string_view keyword;
    int least;
    std::string_view allowed;
};
inline constexpr integer_keyword integer_keywords[] = {
    {"connect_timeout", INT_MIN, "a whole number of seconds (below 2 means 2; 0 or less means no limit)"},
    {"keepalives", 0, "0 (off) or 1 (on)"},
    {"keepalives_idle", 0, "a whole number of seconds, 0 or more (0: the system's default)"},
    {"keepalives_interval", 0, "a whole number of seconds, 0 or more (0: the system's default)"},
    {"keepalives_count", 0, "a whole number, 0 or more (0: the system's default)"},
    {"tcp_user_timeout", 0, "a whole number of milliseconds, 0 or more (0: the system's default)"},
};

inline std::string join_words(std::span<const std::string_view> words) {
    std::string out;
    for (std::size_t i = 0; i < words.size(); ++i) {
        if (i) out += i + 1 == words.size() ? " or " : ", ";
        out.append(words[i]);
    }
    return out;
}

// The items of a comma-separated list (an empty string is one empty item).
inline std::vector<std::string> split_list(std::string_view list) {
    std::vector<std::string> items;
    for (;;) {
        const std::size_t comma = list.find(',');
        items.emplace_back(list.substr(0, comma));
        if (comma == std::string_view::npos) return items;
        list.remove_prefix(comma + 1);
    }
}

inline void check_words_and_integers(const parsed_conninfo& ci) {
    for (const auto& k : word_keywords) {
        const std::string* v = ci.get(k.keyword);
        if (v && std::find(k.allowed.begin(), k.allowed.end(), *v) == k.allowed.end())
            fail_check("connection string", k.keyword, quoted(*v), join_words(k.allowed));
    }
    const std::string* lo = ci.get("ssl_min_protocol_version");
    const std::string* hi = ci.get("ssl_max_protocol_version");
    if (lo && hi &&
        std::find(std::begin(tls_versions), std::end(tls_versions), *lo) >
            std::find(std::begin(tls_versions), std::end(tls_versions), *hi))
        fail_check("connection string", "ssl_min_protocol_version", quoted(*lo),
                   "at most ssl_max_protocol_version (" + *hi + ")");
    for (const auto& k : integer_keywords) {
        const std::string* v = ci.get(k.keyword);
        if (!v) continue;
        const auto n = parse_libpq_int(*v);
        if (!n || *n < k.least) fail_check("connection string", k.keyword, quoted(*v), k.allowed);
    }
}

// Ports: numbers from 1 to 65535, one for all hosts or one per host; hostaddr:
// numeric addresses, one per host name when both are given. Empty items mean
// libpq's default, as in libpq.
inline void check_hosts_and_ports(const parsed_conninfo& ci) {
    const std::string* host = ci.get("host");
    const std::string* hostaddr = ci.get("hostaddr");
    const std::size_t n_host = host ? split_list(*host).size() : 0;
    const std::size_t n_addr = hostaddr ? split_list(*hostaddr).size() : 0;
    if (n_host && n_addr && n_host != n_addr)
        fail_check("connection string", "hostaddr", std::to_string(n_addr) + " addresses",
                   "one per host name (host gives " + std::to_string(n_host) + ")");
    if (hostaddr) {
        for (const std::string& a : split_list(*hostaddr)) {
            unsigned char buf[sizeof(in6_addr)];
            if (!a.empty() && ::inet_pton(AF_INET, a.c_str(), buf) != 1 && ::inet_pton(AF_INET6, a.c_str(), buf) != 1)
                fail_check("connection string", "hostaddr", quoted(a), "a numeric IPv4 or IPv6 address");
        }
    }
    const std::string* port = ci.get("port");
    if (!port) return;
    const std::vector<std::string> ports = split_list(*port);
    for (const std::string& p : ports) {
        if (p.empty()) continue;
        const auto n = parse_libpq_int(p);
        if (!n || *n < 1 || *n > 65535) fail_check("connection string", "port", quoted(p), "a number from 1 to 65535");
    }
    const std::size_t hosts = std::max<std::size_t>({n_host, n_addr, 1});
    if (ports.size() > 1 && ports.size() != hosts)
        fail_check("connection string", "port", std::to_string(ports.size()) + " ports",
                   "one port for all hosts, or one per host (" + std::to_string(hosts) + ")");
}

// A certificate or key file that does not exist, is a directory or cannot be
// read: one clear error now instead of a failed connect each time.
inline void check_file(const parsed_conninfo& ci, std::string_view keyword) {
    const std::string* path = ci.get(keyword);
    if (!path) return;
    // libpq 16 and later read "system" as the system's trust store.
    if (keyword == "sslrootcert" && *path == "system") return;
    const std::string kw(keyword);
    // stat(), not std::filesystem: <filesystem> alone costs every user's
    // translation unit more compile time than the rest of pqpool.
    struct stat st {};
    if (::stat(path->c_str(), &st) != 0) {
        if (errno == ENOENT || errno == ENOTDIR) {
            // "engine:key-id" names a key held by an OpenSSL engine, not a file.
            if (keyword == "sslkey" && path->find(':') != std::string::npos) return;
            fail_conninfo(kw + " file " + quoted(*path) + " does not exist");
        }
        // Other errors (permissions) are reported by the open() below.
    } else if (S_ISDIR(st.st_mode)) {
        fail_conninfo(kw + " " + quoted(*path) + " is a directory, not a file");
    }
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
    // writer, forever; O_NOCTTY: a terminal device must not become ours.
    const int fd = ::open(path->c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        const int e = errno;
        fail_conninfo(kw + " file " + quoted(*path) + " cannot be read: " + std::strerror(e));
    }
    ::close(fd);
}

inline void check_conninfo(const parsed_conninfo& ci) {
    check_words_and_integers(ci);
    check_hosts_and_ports(ci);
    check_file(ci, "sslrootcert");
    check_file(ci, "sslcert");
    check_file(ci, "sslkey");
}

// ---------------------------------------------------------------------------
// The connect timeout per host

// libpq's reading of connect_timeout: seconds, below 2 means 2, 0 or less means
// no limit (milliseconds::max()).
inline std::chrono::milliseconds libpq_connect_timeout(int seconds) {
    if (seconds <= 0) return std::chrono::milliseconds::max();
    return std::chrono::seconds{std::max(seconds, 2)};
}

inline constexpr std::chrono::milliseconds default_connect_timeout{std::chrono::seconds{10}};

// The time one host may take: `libpq_options::connect_timeout` when set, else
// the conninfo's `connect_timeout`, else PGCONNECT_TIMEOUT, else 10 s. The
// option and the conninfo keyword must agree when both are given.
inline std::chrono::milliseconds resolve_connect_timeout(const parsed_conninfo& ci, const libpq_defaults& env,
                                                         std::optional<std::chrono::milliseconds> option) {
    std::optional<std::chrono::milliseconds> from_conninfo;
    if (const std::string* v = ci.get("connect_timeout")) from_conninfo = libpq_connect_timeout(*parse_libpq_int(*v));
    if (option) {
        if (from_conninfo && *from_conninfo != *option)
            throw config_error("pqpool: the connection string's connect_timeout=" + *ci.get("connect_timeout") + " (" +
                               show_ms(*from_conninfo) + ") disagrees with libpq_options::connect_timeout (" +
                               show_ms(*option) + "); set one of them");
        return *option;
    }
    if (from_conninfo) return *from_conninfo;
    if (const std::string* v = env.get("connect_timeout")) {
        const auto n = parse_libpq_int(*v);
        if (!n)
            fail_check("environment", "PGCONNECT_TIMEOUT", quoted(*v),
                       "a whole number of seconds (below 2 means 2; 0 or less means no limit)");
        return libpq_connect_timeout(*n);
    }
    return default_connect_timeout;
}

// ---------------------------------------------------------------------------
// The plan: which libpq connections an attempt makes, in order

// Added unless the connection string sets them, so that a dead network path
// becomes an error: keepalive probes after 30 s idle, every 10 s, 3 lost
// probes end the connection (about 60 s when idle); unacknowledged data ends
// it after 30 s.
struct conninfo_default {
    std::string_view keyword, value;
};
inline constexpr conninfo_default tcp_defaults_list[] = {
    {"keepalives", "1"},       {"keepalives_idle", "30"},     {"keepalives_interval", "10"},
    {"keepalives_count", "3"}, {"tcp_user_timeout", "30000"},
};

// One libpq connection of an attempt: the keywords for PQconnectStartParams,
// the name of its host for messages ("127.0.0.1:5432"), and its host, address
// and port as given (a credentials callable is told which host it is for; with
// a service file or a single libpq connection, the whole lists).
struct connect_target {
    std::vector<std::string> keywords, values;
    std::string label;
    std::string host, hostaddr, port;
};

inline std::string host_label(std::string_view host, std::string_view hostaddr, std::string_view port) {
    std::string name(host.empty() ? hostaddr : host);
    if (name.empty()) name = "the default host";
    if (name.find(':') != std::string::npos && name.front() != '/') name = "[" + name + "]";
    if (!host.empty() && !hostaddr.empty()) name += " (" + std::string(hostaddr) + ")";
    return name + ":" + std::string(port.empty() ? "5432" : port);
}

// Several hosts become one libpq connection each, tried in turn: libpq's
// non-blocking API cannot be told to give up on one host and move to the
// next, and the connect timeout is per host. target_session_attrs is passed
// on to each; prefer-standby becomes libpq's two passes (every host as a
// standby, then every host as any server). With a service file the list is
// the service's business and stays whole; so do the TCP settings.
inline std::vector<connect_target> plan_connects(const parsed_conninfo& ci, const libpq_defaults& env) {
    const bool service = ci.get("service") || env.get("service");
    auto resolved = [&](std::string_view kw) -> std::string {
        if (const std::string* v = ci.get(kw)) return *v;
        if (const std::string* v = service ? nullptr : env.get(kw)) return *v;
        return {};
    };
    const std::string host = resolved("host"), hostaddr = resolved("hostaddr"), port = resolved("port");
    const std::vector<std::string> hosts = split_list(host), addrs = split_list(hostaddr), ports = split_list(port);
    const std::size_t n = std::max(host.empty() ? 0 : hosts.size(), hostaddr.empty() ? 0 : addrs.size());
    const bool split = !service && n > 1;

    connect_target base;
    for (const auto& v : ci.given) {
        if (split && (v.keyword == "host" || v.keyword == "hostaddr" || v.keyword == "port" ||
                      v.keyword == "target_session_attrs"))
            continue;
        base.keywords.push_back(v.keyword);
        base.values.push_back(v.value);
    }
    if (!service)
        for (const auto& d : tcp_defaults_list)
            if (!ci.get(d.keyword)) {
                base.keywords.emplace_back(d.keyword);
                base.values.emplace_back(d.value);
            }
    if (!split) {
        base.label = host_label(host, hostaddr, port);
        base.host = host;
        base.hostaddr = hostaddr;
        base.port = port;
        return {base};
    }

    const std::string attrs = resolved("target_session_attrs");
    std::vector<std::string> passes{attrs};
    if (attrs == "prefer-standby") passes = {"standby", "any"};
    std::vector<connect_target> plan;
    for (const std::string& pass : passes) {
        for (std::size_t i = 0; i < n; ++i) {
            connect_target t = base;
            const std::string h = host.empty() ? std::string() : hosts[i];
            const std::string a = hostaddr.empty() ? std::string() : addrs[i];
            const std::string p = ports.size() == n ? ports[i] : ports.front();
            for (auto [kw, v] : {std::pair<const char*, const std::string*>{"host", &h},
                                 {"hostaddr", &a},
                                 {"port", &p},
                                 {"target_session_attrs", &pass}}) {
                if (v->empty()) continue;
                t.keywords.emplace_back(kw);
                t.values.push_back(*v);
            }
            t.label = host_label(h, a, p);
            t.host = h;
            t.hostaddr = a;
            t.port = p;
            plan.push_back(std::move(t));
        }
    }
    return plan;
}

// ---------------------------------------------------------------------------
// The server's name for messages

inline std::string quote_conninfo_value(std::string_view v) {
    if (!v.empty() && v.find_first_of(" \t\n'\\") == std::string_view::npos) return std::string(v);
    std::string out = "'";
    for (char c : v) {
        if (c == '\'' || c == '\\') out += '\\';
        out += c;
    }
    return out += '\'';
}

// "host=… port=… dbname=… user=…": what libpq would use, the environment and
// compiled-in defaults included (a service file can set anything, so with a
// service only what was given explicitly is shown); a default host (the Unix
// socket directory) is left out. Never a secret.
// A keyword's value as libpq would use it: given, else from the environment
// or libpq's compiled-in default (not with a service file, which can set
// anything); empty when none.
inline std::string resolved_value(const parsed_conninfo& ci, const libpq_defaults& env, std::string_view keyword) {
    if (const std::string* v = ci.get(keyword)) return *v;
    if (const std::string* v = ci.get("service") ? nullptr : env.get(keyword)) return *v;
    return {};
}

inline std::string describe(const parsed_conninfo& ci, const libpq_defaults& env) {
    const bool service = ci.get("service") != nullptr;
    auto resolved = [&](std::string_view kw) { return resolved_value(ci, env, kw); };
    std::string out;
    auto add = [&](std::string_view kw, const std::string& v) {
        if (v.empty()) return;
        if (!out.empty()) out += ' ';
        out.append(kw).append("=").append(quote_conninfo_value(v));
    };
    if (service) add("service", *ci.get("service"));
    add("host", resolved("host"));
    add("hostaddr", resolved("hostaddr"));
    add("port", resolved("port"));
    const std::string user = resolved("user");
    std::string dbname = resolved("dbname");
    if (dbname.empty() && !service) dbname = user; // libpq's rule: the database defaults to the user
    add("dbname", dbname);
    add("user", user);
    if (out.empty()) out = "the default server";
    return out;
}

} // namespace pqpool::detail
