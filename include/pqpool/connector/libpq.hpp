#pragma once

/// \file
/// `pqpool::libpq_connector`: the connector that opens real PostgreSQL
/// connections with libpq.
///
/// Every call is bounded: connects, setup statements, pings and resets wait
/// with `poll()` against a deadline and never block past it. The one
/// exception is libpq's own host-name lookup (see `connect`).

#include <pqpool/connector/concept.hpp>
#include <pqpool/detail/redact.hpp>
#include <pqpool/error.hpp>

#include <libpq-fe.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace pqpool {

/// The run-time settings of a `libpq_connector`.
struct libpq_options {
    /// How long one connection attempt may take, TCP and TLS handshakes and
    /// authentication included. libpq's own `connect_timeout` keyword is not
    /// enforced on a non-blocking connect; this is.
    std::chrono::milliseconds connect_timeout{std::chrono::seconds{10}};
    /// How long each setup statement, and each `reset`, may take.
    std::chrono::milliseconds io_timeout{std::chrono::seconds{10}};
    /// Statements run on every new connection, in order, before the pool sees
    /// it (e.g. `"SET search_path TO app"`). Each may hold several statements
    /// separated by `;`.
    std::vector<std::string> setup{};
};

namespace detail {

// poll()'s "the peer shut down its side", Linux-only; elsewhere a hang-up still
// shows as POLLHUP, or as POLLIN followed by EOF in PQconsumeInput.
#ifdef POLLRDHUP
inline constexpr short poll_rdhup = POLLRDHUP;
#else
inline constexpr short poll_rdhup = 0;
#endif

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
// values libpq rejects, a missing password, a name that does not resolve. Any
// other failure without a SQLSTATE is network-level (refused, unreachable,
// timed out, closed by the server) and worth retrying. These are libpq's
// English texts; under a translated libpq nothing matches and failures count
// as transient, which costs retries, never a wrong success.
inline bool looks_like_configuration_mistake(std::string_view msg) noexcept {
    constexpr std::string_view markers[] = {
        "certificate",                  // verify failed, host name mismatch, unreadable file, client cert refused
        "private key",                  // unreadable or world-readable sslkey
        "does not support SSL",         // sslmode=require against a server without TLS
        "GSSAPI encryption required",   // gssencmode=require and none possible
        "invalid ",                     // invalid port number / sslmode value / integer value / response
        "could not parse network address",
        "could not match",              // port count does not match host count
        "no password supplied",
        "channel binding",
        "authentication method",        // an authentication method libpq does not support
        "requirepeer",
        "Name or service not known",    // NXDOMAIN; "Temporary failure in name resolution" stays transient
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
// transience. With several hosts or an sslmode=prefer fallback the message
// holds one part per attempt; the last server that answered decides.
inline libpq_failure parse_connect_failure(std::string_view raw) {
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
    f.transient = f.sqlstate.empty() ? !looks_like_configuration_mistake(f.text) : is_transient_sqlstate(f.sqlstate);
    return f;
}

enum class exec_outcome { ok, server_error, io_error, timeout };

struct exec_result {
    exec_outcome outcome = exec_outcome::ok;
    ExecStatusType last = PGRES_COMMAND_OK; // status of the first failed result, else of the last one
    char sqlstate[6] = {};                  // of the first failed result, if the server sent one
    std::string message;                    // filled on failure only, and only when asked for
};

struct conninfo_deleter {
    void operator()(PQconninfoOption* o) const noexcept { PQconninfoFree(o); }
};

struct pgconn_deleter {
    void operator()(PGconn* c) const noexcept { PQfinish(c); }
};

inline std::string quote_conninfo_value(std::string_view v) {
    if (!v.empty() && v.find_first_of(" \t\n'\\") == std::string_view::npos) return std::string(v);
    std::string out = "'";
    for (char c : v) {
        if (c == '\'' || c == '\\') out += '\\';
        out += c;
    }
    return out += '\'';
}

// A FATAL or PANIC that the server sends to an idle connection (57P01 when the
// backend is terminated, 57P05 on idle_session_timeout, a shutdown) reaches
// libpq's notice receiver as soon as the input is parsed, while the socket may
// stay open for milliseconds more. probe() parses what arrived and asks this
// receiver, installed on every connection the connector opens, whether it saw
// one. Every notice is then handed on to libpq's default receiver (which
// ignores its argument), so the application's notice processor still sees it.
inline thread_local bool fatal_notice_seen = false;
inline std::atomic<PQnoticeReceiver> default_notice_receiver{nullptr};

inline void watch_for_fatal(void* arg, const PGresult* res) {
    const char* severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    if (severity && (std::strcmp(severity, "FATAL") == 0 || std::strcmp(severity, "PANIC") == 0))
        fatal_notice_seen = true;
    if (PQnoticeReceiver next = default_notice_receiver.load(std::memory_order_relaxed)) next(arg, res);
}

} // namespace detail

/// The real connector: opens `PGconn*` connections to one server (or one list
/// of hosts) described by a conninfo string or a `postgresql://` URI.
///
/// Thread safety: every member is `const` and may be called from several
/// threads at once, each on its own handle.
class libpq_connector {
public:
    using category = connector_tag;
    using handle = PGconn*;
    using clock = std::chrono::steady_clock;

    /// Parses and checks `conninfo_or_uri` (key=value words or a
    /// `postgresql://` URI); opens nothing.
    ///
    /// Throws `config_error` for input libpq cannot parse, a port that is not
    /// a number from 1 to 65535, an unknown `sslmode`, or an `sslrootcert`,
    /// `sslcert` or `sslkey` file that does not exist or cannot be read. No
    /// message quotes the password. Cost: one parse and a few `stat`/`open`
    /// calls, no network I/O.
    explicit libpq_connector(std::string_view conninfo_or_uri, libpq_options options = {});

    /// Opens a connection and runs the setup statements; returns it idle.
    ///
    /// Non-blocking: waits with `poll()` until `min(deadline, now +
    /// connect_timeout)` for the connection, then up to `io_timeout` (and
    /// never past `deadline`) for each setup statement. The exception is the
    /// host-name lookup, which libpq does blocking inside
    /// `PQconnectStartParams`; give `hostaddr` to avoid it.
    ///
    /// Throws `connect_error` with libpq's message (password scrubbed), the
    /// server's SQLSTATE when it sent one (e.g. "28P01", "3D000", "53300"),
    /// and `transient()` true for network-level failures and transient
    /// SQLSTATEs, false for configuration mistakes (certificate problems,
    /// wrong password, unknown database) and failed setup statements.
    /// Cost: the startup handshake (a few round trips; more with TLS) plus
    /// one round trip per setup statement.
    handle connect(clock::time_point deadline) const;

    /// Ends the session politely (`PQfinish`: sends Terminate, and a TLS
    /// close_notify). Cost: one write, no wait. A null handle is ignored.
    void close(handle h) const noexcept { PQfinish(h); }

    /// Frees a connection without one byte of I/O on its socket: the only
    /// call allowed on a connection inherited across `fork()`.
    ///
    /// `PQfinish` alone would write Terminate (and a TLS close_notify) on the
    /// socket the child shares with its parent and break the parent's
    /// session. So `/dev/null` is first `dup2`'d over the socket's descriptor:
    /// libpq's farewell goes nowhere and the parent's socket stays open in the
    /// parent. If `/dev/null` cannot be opened or `dup2` fails, the
    /// connection is leaked (memory and one descriptor) rather than risk a
    /// write on the parent's socket. Cost: open, dup2, close, then PQfinish's
    /// frees; no network I/O.
    void abandon(handle h) const noexcept;

    /// Is `h` still usable? Local checks only, no round trip.
    ///
    /// True when libpq's status is OK, no transaction or command is open, and
    /// a zero-timeout `poll()` shows no hang-up. Unread data (a NOTIFY, a
    /// ParameterStatus) is read into libpq's buffer, left there for the
    /// application, and does not count as death; a server that terminated the
    /// backend (57P01) or closed the connection, over TLS or not, does.
    /// A FATAL the server sent before closing (57P01, 57P05) counts as death
    /// as soon as it has arrived, before the close: the connector installs a
    /// notice receiver on each connection that notices it and hands every
    /// notice on to libpq's default one (an application that installs its own
    /// receiver on a leased connection turns this early detection off for that
    /// connection; the close is still seen). Cost: one `poll()` syscall; when
    /// data is waiting, one read, a parse and one more `poll()`.
    bool probe(handle h) const noexcept;

    /// Was the connection lost (`PQstatus` is `CONNECTION_BAD`)? Costs nothing:
    /// local state only. `pool.run` asks it after the work, to decide on a retry.
    bool broken(handle h) const noexcept { return h == nullptr || PQstatus(h) == CONNECTION_BAD; }

    /// Asks the server: sends an empty query and waits for its answer until
    /// `deadline`.
    ///
    /// True only when the server answered with the empty-query response and
    /// the connection is idle afterwards. Never blocks past `deadline`. Cost:
    /// one round trip.
    bool ping(handle h, clock::time_point deadline) const noexcept;

    /// Makes `h` clean for the next lease; false means "close it".
    ///
    /// Idle: true without I/O. In a transaction or a failed one: `ROLLBACK`,
    /// true when it succeeded and left the connection idle. A command still
    /// running, unread results, COPY, pipeline mode, or a broken connection:
    /// false. With `discard_all`, then `DISCARD ALL`, true only if it
    /// succeeded. Everything together is bounded by `io_timeout`. Cost: none
    /// when idle without `discard_all`, else one round trip per statement.
    bool reset(handle h, bool discard_all) const noexcept;

    /// "host=… port=… dbname=… user=…" of the server, for messages and logs.
    /// Never holds the password. Defaults libpq would apply from the
    /// environment or its compiled-in values are shown; a default host (the
    /// Unix socket directory) is left out.
    const std::string& description() const noexcept { return description_; }

    /// The options given at construction.
    const libpq_options& options() const noexcept { return options_; }

private:
    [[noreturn]] void fail_config(std::string what) const;
    [[noreturn]] void fail_connect(std::string what, std::string sqlstate, bool transient) const;
    const std::string* value_of(std::string_view keyword) const noexcept;
    void check_ports() const;
    void check_file(const std::string& keyword) const;
    void describe();
    void run_setup(PGconn* c, clock::time_point deadline) const;

    static int wait_for(int fd, short events, clock::time_point deadline) noexcept;
    static detail::exec_result exec_until(PGconn* h, const char* sql, clock::time_point deadline, bool want_message);

    std::vector<std::string> keywords_; // the non-empty options the user gave, for PQconnectStartParams
    std::vector<std::string> values_;
    std::vector<std::string> secrets_;  // every form of every password seen, to scrub from messages
    std::string description_;
    libpq_options options_;
};

static_assert(connector<libpq_connector>);

// ---------------------------------------------------------------------------
// Implementation

inline libpq_connector::libpq_connector(std::string_view conninfo_or_uri, libpq_options options)
    : options_(std::move(options)) {
    const std::string input(conninfo_or_uri);
    // Anything libpq could echo is scrubbed, including forms of the password
    // libpq itself would never have parsed.
    secrets_ = detail::find_secrets(input);
    if (input.find('\0') != std::string::npos)
        fail_config("pqpool: invalid connection string: it contains a NUL character");

    char* err = nullptr;
    std::unique_ptr<PQconninfoOption, detail::conninfo_deleter> parsed{PQconninfoParse(input.c_str(), &err)};
    if (!parsed) {
        std::string why = err ? detail::redact_parse_error(err, input) : std::string("out of memory");
        PQfreemem(err);
        fail_config("pqpool: invalid connection string: " + why);
    }
    for (const PQconninfoOption* o = parsed.get(); o->keyword; ++o) {
        if (!o->val || !*o->val) continue;
        keywords_.emplace_back(o->keyword);
        values_.emplace_back(o->val);
        if (o->dispchar && o->dispchar[0] == '*') secrets_.emplace_back(o->val);
    }
    // PGPASSWORD and friends: libpq never echoes them, but cheap insurance.
    if (std::unique_ptr<PQconninfoOption, detail::conninfo_deleter> defaults{PQconndefaults()}) {
        for (const PQconninfoOption* o = defaults.get(); o->keyword; ++o)
            if (o->val && *o->val && o->dispchar && o->dispchar[0] == '*') secrets_.emplace_back(o->val);
    }

    if (const std::string* mode = value_of("sslmode")) {
        constexpr std::string_view modes[] = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"};
        if (std::find(std::begin(modes), std::end(modes), *mode) == std::end(modes))
            fail_config("pqpool: invalid sslmode \"" + *mode +
                        "\" in the connection string (expected disable, allow, prefer, require, verify-ca or "
                        "verify-full)");
    }
    check_ports();
    check_file("sslrootcert");
    check_file("sslcert");
    check_file("sslkey");
    describe();
}

inline void libpq_connector::fail_config(std::string what) const {
    detail::scrub_secrets(what, secrets_);
    throw config_error(std::move(what));
}

inline void libpq_connector::fail_connect(std::string what, std::string sqlstate, bool transient) const {
    std::string msg = "pqpool: cannot connect to " + description_ + ": " + what;
    detail::scrub_secrets(msg, secrets_);
    throw connect_error(std::move(msg), std::move(sqlstate), transient);
}

inline const std::string* libpq_connector::value_of(std::string_view keyword) const noexcept {
    for (std::size_t i = 0; i < keywords_.size(); ++i)
        if (keywords_[i] == keyword) return &values_[i];
    return nullptr;
}

inline void libpq_connector::check_ports() const {
    const std::string* ports = value_of("port");
    if (!ports) return;
    std::size_t n_ports = 0;
    std::string_view rest = *ports;
    for (;;) {
        const std::size_t comma = rest.find(',');
        const std::string_view port = rest.substr(0, comma);
        ++n_ports;
        // An empty item means the default port, as in libpq.
        if (!port.empty()) {
            long value = 0;
            bool ok = port.size() <= 5;
            for (char c : port) {
                ok = ok && c >= '0' && c <= '9';
                if (ok) value = value * 10 + (c - '0');
            }
            if (!ok || value < 1 || value > 65535)
                fail_config("pqpool: invalid port \"" + std::string(port) +
                            "\" in the connection string (expected a number from 1 to 65535)");
        }
        if (comma == std::string_view::npos) break;
        rest.remove_prefix(comma + 1);
    }
    const std::string* hosts = value_of("hostaddr");
    if (!hosts) hosts = value_of("host");
    const std::size_t n_hosts = hosts ? static_cast<std::size_t>(std::count(hosts->begin(), hosts->end(), ',')) + 1 : 1;
    if (n_ports > 1 && n_ports != n_hosts)
        fail_config("pqpool: the connection string gives " + std::to_string(n_ports) + " ports for " +
                    std::to_string(n_hosts) + " hosts (give one port for all, or one per host)");
}

inline void libpq_connector::check_file(const std::string& keyword) const {
    const std::string* path = value_of(keyword);
    if (!path) return;
    // libpq 16 and later read "system" as the system's trust store.
    if (keyword == "sslrootcert" && *path == "system") return;
    // stat(), not std::filesystem: <filesystem> alone costs every user's
    // translation unit more compile time than the rest of pqpool.
    struct stat st {};
    if (::stat(path->c_str(), &st) != 0) {
        if (errno == ENOENT || errno == ENOTDIR) {
            // "engine:key-id" names a key held by an OpenSSL engine, not a file.
            if (keyword == "sslkey" && path->find(':') != std::string::npos) return;
            fail_config("pqpool: " + keyword + " file \"" + *path + "\" does not exist");
        }
        // Other errors (permissions) are reported by the open() below.
    } else if (S_ISDIR(st.st_mode)) {
        fail_config("pqpool: " + keyword + " \"" + *path + "\" is a directory, not a file");
    }
    const int fd = ::open(path->c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        const int e = errno;
        fail_config("pqpool: " + keyword + " file \"" + *path + "\" cannot be read: " + std::strerror(e));
    }
    ::close(fd);
}

inline void libpq_connector::describe() {
    // What libpq would fill in: the environment (PGHOST, PGPORT, PGUSER,
    // PGDATABASE) and compiled-in defaults. A service file can set anything,
    // so with `service` only what was given explicitly is shown.
    std::unique_ptr<PQconninfoOption, detail::conninfo_deleter> defaults;
    if (!value_of("service")) defaults.reset(PQconndefaults());
    auto resolved = [&](std::string_view kw) -> std::string {
        if (const std::string* v = value_of(kw)) return *v;
        if (defaults)
            for (const PQconninfoOption* o = defaults.get(); o->keyword; ++o)
                if (kw == o->keyword && o->val && *o->val) return o->val;
        return {};
    };
    std::string out;
    auto add = [&](std::string_view kw, const std::string& v) {
        if (v.empty()) return;
        if (!out.empty()) out += ' ';
        out.append(kw).append("=").append(detail::quote_conninfo_value(v));
    };
    if (const std::string* service = value_of("service")) add("service", *service);
    add("host", resolved("host"));
    add("hostaddr", resolved("hostaddr"));
    add("port", resolved("port"));
    const std::string user = resolved("user");
    std::string dbname = resolved("dbname");
    if (dbname.empty() && !value_of("service")) dbname = user; // libpq's rule: the database defaults to the user
    add("dbname", dbname);
    add("user", user);
    if (out.empty()) out = "the default server";
    description_ = std::move(out);
}

inline int libpq_connector::wait_for(int fd, short events, clock::time_point deadline) noexcept {
    // Strict about the deadline: once it has passed, no more waiting and no
    // more progress, even if the socket happens to be ready.
    for (;;) {
        const auto now = clock::now();
        if (now >= deadline) return 0;
        // Rounded up so poll() never wakes before the deadline and spins.
        const auto ms = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
        pollfd p{fd, events, 0};
        const int n = ::poll(&p, 1, static_cast<int>(std::min<decltype(ms)>(ms, INT_MAX)));
        if (n > 0) return p.revents;
        if (n < 0 && errno != EINTR) return -1;
    }
}

inline detail::exec_result libpq_connector::exec_until(PGconn* h, const char* sql, clock::time_point deadline,
                                                       bool want_message) {
    using detail::exec_outcome;
    detail::exec_result r;
    auto fail = [&](exec_outcome why, const char* text) -> detail::exec_result& {
        r.outcome = why;
        if (want_message) {
            r.message = text && *text ? text : "connection lost";
            while (!r.message.empty() && (r.message.back() == '\n' || r.message.back() == ' '))
                r.message.pop_back();
        }
        return r;
    };
    const int fd = PQsocket(h);
    if (fd < 0 || PQstatus(h) != CONNECTION_OK) return fail(exec_outcome::io_error, PQerrorMessage(h));
    // Nothing sent yet, so the connection is still clean: a caller that had
    // no time left does not lose it.
    if (clock::now() >= deadline) return fail(exec_outcome::timeout, "timed out");

    // Non-blocking while we own the socket, so a full send buffer cannot make
    // PQsendQuery block past the deadline; the caller's mode comes back after.
    const bool was_nonblocking = PQisnonblocking(h) != 0;
    if (!was_nonblocking && PQsetnonblocking(h, 1) != 0) return fail(exec_outcome::io_error, PQerrorMessage(h));
    struct restore_mode {
        PGconn* h;
        bool was;
        ~restore_mode() {
            if (!was) PQsetnonblocking(h, 0);
        }
    } restore{h, was_nonblocking};

    if (!PQsendQuery(h, sql)) return fail(exec_outcome::io_error, PQerrorMessage(h));
    for (;;) {
        const int f = PQflush(h);
        if (f == 0) break;
        if (f < 0) return fail(exec_outcome::io_error, PQerrorMessage(h));
        // As libpq's docs ask: while output is pending, also read, or a
        // server blocked on its own full send buffer would deadlock us.
        const int ev = wait_for(fd, POLLOUT | POLLIN, deadline);
        if (ev == 0) return fail(exec_outcome::timeout, "timed out");
        if (ev < 0) return fail(exec_outcome::io_error, "poll() failed");
        if ((ev & POLLIN) && !PQconsumeInput(h)) return fail(exec_outcome::io_error, PQerrorMessage(h));
    }
    bool failed = false;
    for (;;) {
        while (!PQisBusy(h)) {
            PGresult* res = PQgetResult(h);
            if (!res) {
                if (!failed) return r;
                // The connection broke mid-way: a network failure, not the server refusing the SQL.
                if (PQstatus(h) != CONNECTION_OK) r.outcome = exec_outcome::io_error;
                return r;
            }
            const ExecStatusType st = PQresultStatus(res);
            if (!failed) r.last = st;
            if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
                // Cannot be drained without speaking COPY; the caller closes the connection.
                PQclear(res);
                return fail(exec_outcome::server_error, "the statement started a COPY, which is not supported here");
            }
            if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY && !failed) {
                failed = true;
                if (const char* code = PQresultErrorField(res, PG_DIAG_SQLSTATE)) {
                    std::strncpy(r.sqlstate, code, 5);
                    r.sqlstate[5] = '\0';
                }
                if (want_message) {
                    // Terse: no "LINE 1: <statement>" echo, so no statement text in the message.
                    char* text = PQresultVerboseErrorMessage(res, PQERRORS_TERSE, PQSHOW_CONTEXT_NEVER);
                    fail(exec_outcome::server_error, text ? text : PQresultErrorMessage(res));
                    PQfreemem(text);
                } else {
                    r.outcome = exec_outcome::server_error;
                }
            }
            PQclear(res);
        }
        const int ev = wait_for(fd, POLLIN, deadline);
        if (ev == 0) return fail(exec_outcome::timeout, "timed out");
        if (ev < 0) return fail(exec_outcome::io_error, "poll() failed");
        if (!PQconsumeInput(h)) return fail(exec_outcome::io_error, PQerrorMessage(h));
    }
}

inline void libpq_connector::run_setup(PGconn* c, clock::time_point deadline) const {
    for (std::size_t i = 0; i < options_.setup.size(); ++i) {
        const auto start = clock::now();
        const auto r = exec_until(c, options_.setup[i].c_str(), std::min(deadline, start + options_.io_timeout), true);
        if (r.outcome == detail::exec_outcome::ok) continue;
        std::string what = "setup[" + std::to_string(i) + "] failed: ";
        if (r.outcome == detail::exec_outcome::timeout) {
            const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - start).count();
            what += "timed out after " + std::to_string(ms) + " ms";
        } else {
            what += r.message;
        }
        if (r.sqlstate[0]) what += std::string(" (SQLSTATE ") + r.sqlstate + ")";
        // The server refused the statement: a retry will not change its mind.
        // A connection lost or too slow on the way is a network matter.
        fail_connect(std::move(what), r.sqlstate, r.outcome != detail::exec_outcome::server_error);
    }
}

inline libpq_connector::handle libpq_connector::connect(clock::time_point deadline) const {
    const auto start = clock::now();
    const auto attempt_deadline = std::min(deadline, start + options_.connect_timeout);
    auto timed_out = [&] {
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - start).count();
        fail_connect("timed out after " + std::to_string(ms) + " ms", {}, true);
    };
    if (start >= attempt_deadline) timed_out();

    std::vector<const char*> keywords, values;
    keywords.reserve(keywords_.size() + 1);
    values.reserve(values_.size() + 1);
    for (std::size_t i = 0; i < keywords_.size(); ++i) {
        keywords.push_back(keywords_[i].c_str());
        values.push_back(values_[i].c_str());
    }
    keywords.push_back(nullptr);
    values.push_back(nullptr);

    // expand_dbname = 0: a URI was already taken apart by PQconninfoParse.
    std::unique_ptr<PGconn, detail::pgconn_deleter> c{PQconnectStartParams(keywords.data(), values.data(), 0)};
    if (!c) fail_connect("out of memory", {}, true);
    // Makes a server's FATAL carry its SQLSTATE in the message (see
    // parse_connect_failure); set before any byte from the server is read.
    PQsetErrorVerbosity(c.get(), PQERRORS_VERBOSE);
    auto failed = [&] {
        auto f = detail::parse_connect_failure(PQerrorMessage(c.get()));
        fail_connect(std::move(f.text), std::move(f.sqlstate), f.transient);
    };

    // libpq's protocol: before the first PQconnectPoll, act as if it had
    // asked to wait for writability.
    PostgresPollingStatusType st = PQstatus(c.get()) == CONNECTION_BAD ? PGRES_POLLING_FAILED : PGRES_POLLING_WRITING;
    while (st != PGRES_POLLING_OK) {
        if (st == PGRES_POLLING_FAILED) failed();
        // Re-read every time: a fallback (next host, sslmode=prefer without TLS) opens a new socket.
        const int fd = PQsocket(c.get());
        if (fd < 0) failed();
        const int ev = wait_for(fd, st == PGRES_POLLING_READING ? POLLIN : POLLOUT, attempt_deadline);
        if (ev == 0) timed_out();
        if (ev < 0) {
            const int e = errno;
            fail_connect(std::string("poll() failed: ") + std::strerror(e), {}, true);
        }
        st = PQconnectPoll(c.get());
    }
    PQsetErrorVerbosity(c.get(), PQERRORS_DEFAULT);
    if (PQnoticeReceiver previous = PQsetNoticeReceiver(c.get(), &detail::watch_for_fatal, nullptr);
        previous && previous != &detail::watch_for_fatal)
        detail::default_notice_receiver.store(previous, std::memory_order_relaxed);
    run_setup(c.get(), deadline);
    return c.release();
}

inline void libpq_connector::abandon(handle h) const noexcept {
    if (!h) return;
    const int fd = PQsocket(h);
    if (fd >= 0) {
        const int devnull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
        if (devnull < 0) return; // leak: no descriptor to neutralise the socket with
        int r;
        // EBUSY: Linux's dup2 racing an open() of the same number in another thread.
        do r = ::dup2(devnull, fd);
        while (r < 0 && (errno == EINTR || errno == EBUSY));
        ::close(devnull);
        if (r < 0) return; // leak: the socket is still the parent's, PQfinish would write on it
    }
    PQfinish(h);
}

inline bool libpq_connector::probe(handle h) const noexcept {
    if (!h || PQstatus(h) != CONNECTION_OK || PQtransactionStatus(h) != PQTRANS_IDLE) return false;
    const int fd = PQsocket(h);
    if (fd < 0) return false;
    // A few rounds at most: a steady stream of notifications must not keep us here.
    for (int round = 0; round < 3; ++round) {
        pollfd p{fd, static_cast<short>(POLLIN | detail::poll_rdhup), 0};
        int n;
        do n = ::poll(&p, 1, 0);
        while (n < 0 && errno == EINTR);
        // poll() itself failing (ENOMEM) says nothing either way; a false
        // "dead" costs a reconnect, a false "alive" costs the caller a query.
        if (n < 0) return false;
        if (n == 0) return true;
        if (p.revents & (detail::poll_rdhup | POLLHUP | POLLERR | POLLNVAL)) return false;
        // Plain POLLIN: a NOTIFY, ParameterStatus or notice, or the server's
        // last words (a FATAL, a TLS close_notify) before it closes. Read and
        // parse it: EOF or a close_notify turns the status BAD, a FATAL reaches
        // the notice receiver; notifications stay queued for the application.
        if (!PQconsumeInput(h)) return false;
        detail::fatal_notice_seen = false;
        (void)PQisBusy(h); // parses the input
        if (detail::fatal_notice_seen || PQstatus(h) != CONNECTION_OK) return false;
    }
    return true;
}

inline bool libpq_connector::ping(handle h, clock::time_point deadline) const noexcept {
    if (!h || PQstatus(h) != CONNECTION_OK) return false;
    const auto r = exec_until(h, "", deadline, false);
    return r.outcome == detail::exec_outcome::ok && r.last == PGRES_EMPTY_QUERY &&
           PQtransactionStatus(h) == PQTRANS_IDLE;
}

inline bool libpq_connector::reset(handle h, bool discard_all) const noexcept {
    if (!h || PQstatus(h) != CONNECTION_OK) return false;
#ifdef LIBPQ_HAS_PIPELINING
    if (PQpipelineStatus(h) != PQ_PIPELINE_OFF) return false;
#endif
    const auto deadline = clock::now() + options_.io_timeout;
    auto run = [&](const char* sql) {
        return exec_until(h, sql, deadline, false).outcome == detail::exec_outcome::ok &&
               PQtransactionStatus(h) == PQTRANS_IDLE;
    };
    switch (PQtransactionStatus(h)) {
    case PQTRANS_IDLE:
        break;
    case PQTRANS_INTRANS:
    case PQTRANS_INERROR:
        if (!run("ROLLBACK")) return false;
        break;
    default: // ACTIVE (a command running or results unread, COPY) or UNKNOWN
        return false;
    }
    return !discard_all || run("DISCARD ALL");
}

} // namespace pqpool
