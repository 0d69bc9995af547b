#pragma once

/// \file
/// `pqpool::libpq_connector`: the connector that opens real PostgreSQL
/// connections with libpq.
///
/// Its parts: the connection string taken apart and checked
/// (`detail/conninfo.hpp`, `detail/redact.hpp`), why a connect failed
/// (`detail/connect_failure.hpp`), the bounded exec loop and socket helpers
/// (`detail/libpq_io.hpp`), what is watched on open connections
/// (`detail/connection_watch.hpp`), and here the connector itself: the
/// resumable connect attempt and the operations on open connections.
///
/// Every call is bounded: connects, setup statements, pings, resets and the
/// cancel in `close` wait with `poll()` (or a timed wait) against a deadline
/// and never block past it. The one exception is libpq's own host-name lookup
/// (see `continue_connect`).

#include <pqpool/connector/concept.hpp>
#include <pqpool/connector/credentials.hpp>
#include <pqpool/deadline.hpp>
#include <pqpool/detail/check.hpp>
#include <pqpool/detail/config.hpp>
#include <pqpool/detail/conninfo.hpp>
#include <pqpool/detail/connect_failure.hpp>
#include <pqpool/detail/connection_watch.hpp>
#include <pqpool/detail/fork_gate.hpp>
#include <pqpool/detail/libpq_io.hpp>
#include <pqpool/detail/redact.hpp>
#include <pqpool/error.hpp>

#if PQPOOL_DEFINITIONS // only the definitions check TLS files: OpenSSL's headers stay out of other units
#include <pqpool/detail/tls_files.hpp>
#endif

#include <libpq-fe.h>

#include <poll.h>
#include <sys/stat.h>

#include <chrono>
#include <cstddef>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pqpool {

/// The run-time settings of a `libpq_connector`.
struct libpq_options {
    /// How long one host may take to connect (TCP and TLS handshakes and
    /// authentication included); with several hosts, each gets this long, as
    /// in libpq. Not set: the connection string's `connect_timeout` (seconds,
    /// read as libpq reads it: below 2 means 2, 0 or less means no limit),
    /// else `PGCONNECT_TIMEOUT`, else 10 s. Set together with the keyword, the
    /// two must agree. `milliseconds::max()` means no limit of our own (the
    /// caller's deadline still holds).
    std::optional<std::chrono::milliseconds> connect_timeout{};
    /// How long each setup statement, and each `reset`, may take.
    std::chrono::milliseconds io_timeout{std::chrono::seconds{10}};
    /// How long `close` may spend on a command still running (its cancel, and
    /// the wait for the command to end) before it closes the connection
    /// anyway. A cancel that is never answered
    /// runs on, on a thread of its own, until the path's keepalives or
    /// `tcp_user_timeout` end it; at most 8 do per process, and past them a
    /// connection is closed without a cancel.
    std::chrono::milliseconds cancel_timeout{std::chrono::seconds{1}};
    /// Statements run on every new connection, in order, before the pool sees
    /// it (e.g. `"SET search_path TO app"`). Each may hold several statements
    /// separated by `;`.
    std::vector<std::string> setup{};
    /// Credentials fetched for each connect: called once per host about to be
    /// tried (with several hosts, once for each host tried), on the thread
    /// that drives the connect and never under the pool's lock, so a rotating
    /// secret or a short-lived token (see `rds_iam_auth`) is fetched when it
    /// is needed; connections already open are untouched. Several connects
    /// may call it at once. Its time counts against the caller's wait like a
    /// host-name lookup does (it is not interrupted): keep it quick, or
    /// cached. What it returns is scrubbed from every message like a
    /// password given in the connection string.
    ///
    /// When it throws, that host fails with its message (scrubbed of the
    /// secrets it returned before): a `connect_error` it throws keeps its
    /// SQLSTATE and transience, a `config_error` is not transient, anything
    /// else is (a secrets store that did not answer). A password it supplied
    /// that the server refuses (28P01) counts as transient: the secret may
    /// have rotated between the call and the server's check, and the next
    /// attempt calls it again.
    std::function<connect_credentials(const connect_host&)> credentials{};

    /// Throws `config_error` naming the field, its value and the allowed range
    /// when a timeout is zero or negative. Cost: a few comparisons.
    void check() const {
        if (connect_timeout) detail::check_positive("libpq_options", "connect_timeout", *connect_timeout);
        detail::check_positive("libpq_options", "io_timeout", io_timeout);
        detail::check_positive("libpq_options", "cancel_timeout", cancel_timeout);
    }
};

namespace detail {

// A connect in progress: which libpq connection of the plan, how far it got,
// and why the hosts before it refused.
struct libpq_attempt_state {
    using time_point = io_clock::time_point;

    PGconn* conn = nullptr;
    std::size_t target = 0; // index into the connector's plan
    PostgresPollingStatusType polling = PGRES_POLLING_WRITING;
    bool in_setup = false;
    std::size_t setup_index = 0;
    bool setup_sent = false;
    statement_run run;
    time_point started;
    // The deadline of the current step: this host's connect, or this setup
    // statement. A new socket (libpq moving to the host's next address, or
    // retrying without TLS) restarts a host's clock, as libpq's own
    // connect_timeout does.
    time_point step_deadline;
    int fd = -1;
    ino_t inode = 0;
    bool parked = false;
    time_point parked_at;
    std::vector<refusal> refusals;    // one per host tried
    std::vector<std::string> secrets; // what the credentials callable supplied for the current host
    bool password_supplied = false;   // ...and whether a password was among it
    std::string sqlstate;             // of the last server that answered
    bool transient = false;

    libpq_attempt_state() = default;
    libpq_attempt_state(const libpq_attempt_state&) = delete;
    libpq_attempt_state& operator=(const libpq_attempt_state&) = delete;
    ~libpq_attempt_state() { finish(conn); }
};

// The connector's failure-message path without a server (refusals built from
// a given libpq text): declared here, defined only by tests (tests/fuzz).
struct libpq_connector_access;

} // namespace detail

/// The real connector: opens `PGconn*` connections to one server (or one list
/// of hosts) described by a conninfo string or a `postgresql://` URI.
///
/// Several hosts (`host=a,b`, `hostaddr` lists, one port or one per host) are
/// tried in turn, each with its own connect timeout, as libpq documents; each
/// gets its own libpq connection, and `target_session_attrs` is checked per
/// host (`prefer-standby`: every host as a standby first, then every host as
/// any server). The next host is tried after a network failure, a timeout, a
/// name that does not resolve, a TLS failure, or a server that does not fit
/// `target_session_attrs` or answers 57P03 (not ready yet); a server that
/// refuses (wrong or missing password, unknown database, a failed setup
/// statement) ends the attempt, as libpq documents for authentication.
///
/// Unless the connection string sets them (or names a `service`), connections
/// use TCP keepalives and a TCP user timeout: `keepalives=1
/// keepalives_idle=30 keepalives_interval=10 keepalives_count=3
/// tcp_user_timeout=30000`, so a network path that died silently becomes a
/// connection error after about 60 s idle, or 30 s with data unacknowledged.
/// A keyword the user gave is never overridden (libpq applies the TCP
/// settings only with keepalives on: `keepalives=0` turns them all off).
///
/// Across `fork()`: the first connector a process builds installs a
/// `pthread_atfork` handler that makes `fork()` wait until no thread is inside
/// one of the connector's libpq connect steps or `PQfinish` calls (each one
/// non-blocking call, or a host-name lookup), its TLS file checks or
/// `libpq_options::credentials` calls (a slow callable delays the fork as
/// long), and holds new ones until the fork is done. So a child can connect
/// although a thread of the parent was connecting at the fork (the locks
/// OpenSSL, GSSAPI, the resolver and the callable take are free). The
/// callable may fork itself (run a program); it must not wait for another
/// thread that starts a connect. Not covered: threads of the program that call libpq themselves
/// (`PQconnectdb`, `PQcancel`, queries over TLS), or other libraries holding
/// those locks at the fork. A child must not use the connections or attempts
/// it inherited, except through `abandon` and `abandon_connect`.
///
/// Thread safety: every member is `const` and may be called from several
/// threads at once, each on its own handle or attempt.
class libpq_connector {
public:
    using category = connector_tag;
    using handle = PGconn*;
    using clock = std::chrono::steady_clock;

    /// A connect in progress; empty when default-constructed, after a
    /// connect finished or failed, and after `cancel_connect`. Movable; may
    /// be continued from another thread. Destroying a non-empty attempt
    /// cancels it (`PQfinish`: may write to its socket).
    class attempt {
    public:
        attempt() noexcept = default;
        /// Is a connect in progress?
        bool in_progress() const noexcept { return state_ != nullptr; }

    private:
        friend class libpq_connector;
        friend struct detail::libpq_connector_access;
        std::unique_ptr<detail::libpq_attempt_state> state_;
    };

    /// Parses and checks `conninfo_or_uri` (key=value words or a
    /// `postgresql://` URI) and `options`; opens nothing.
    ///
    /// Throws `config_error` for input libpq cannot parse; a URI whose password
    /// holds an unencoded `/` or `@` (libpq would read pieces of it as host,
    /// port or database: the message quotes nothing of the URI); a value that
    /// holds a password setting (`host= password=x` gives the host the value
    /// "password=x", and so does a quote left open: the message quotes nothing
    /// of it); a value libpq would refuse at every connect (`sslmode`,
    /// `gssencmode`, `channel_binding`, `target_session_attrs`, the TLS
    /// versions, ports, `hostaddr`, integer keywords such as `connect_timeout`
    /// or `keepalives_idle`), naming the keyword, the value and what is
    /// allowed; a `connect_timeout` keyword that disagrees with
    /// `libpq_options::connect_timeout`; an `sslrootcert`, `sslcert` or
    /// `sslkey` file that does not exist or cannot be read, and (unless
    /// `sslmode=disable`) one that OpenSSL finds wrong: not PEM (a key may
    /// also be DER), a certificate expired or not yet valid (a root bundle:
    /// none valid), a key that does not match `sslcert` or cannot be
    /// decrypted with `sslpassword` (unless `libpq_options::credentials` is
    /// set: it may give `sslpassword` at each connect, so an encrypted key is
    /// then left to the connect), a key file with permissions libpq refuses
    /// (each names the file and the problem); and what
    /// `libpq_options::check` refuses. No message quotes a password. Cost: a
    /// parse, `PQconndefaults` (which looks up the user's name), a few
    /// `stat`/`open`/`read` calls that never wait (a FIFO is not waited on or
    /// read), OpenSSL's parse of the files named; no network I/O.
    explicit libpq_connector(std::string_view conninfo_or_uri, libpq_options options = {});

    /// As above; a null pointer (`std::getenv` of a variable that is not set)
    /// is a `config_error`, not a crash.
    explicit libpq_connector(const char* conninfo_or_uri, libpq_options options = {})
        : libpq_connector(checked_conninfo(conninfo_or_uri), std::move(options)) {}

    /// Starts `a` if it is empty, then drives it until the connection is
    /// open and its setup statements have run (returns it, idle; `a` is
    /// empty again), until `deadline` passes (returns null; `a` keeps its
    /// progress and may be continued later, by any thread), or until every
    /// host has failed (throws; `a` is empty again).
    ///
    /// Non-blocking: waits with `poll()`, never past `deadline`; a deadline
    /// already passed still makes the progress that needs no waiting (a look
    /// at the socket, then a libpq step when it is ready), so callers with
    /// very short waits finish a TLS handshake over several calls. Whatever
    /// the deadline, each host gets at most the connect timeout (see
    /// `libpq_options::connect_timeout`) and each setup statement at most
    /// `io_timeout`; time the attempt spent parked between calls counts
    /// against them only when the server had not answered meanwhile. The
    /// exception to non-blocking is the host-name lookup, which libpq does
    /// blocking when it starts a host; give `hostaddr` to avoid it.
    ///
    /// Throws `connect_error`: with one host, libpq's message (password
    /// scrubbed); with several, each host tried and why it refused
    /// (`host 10.0.0.1:5432: timed out after 2000 ms; host 127.0.0.1:5433:
    /// FATAL: ...`). `sqlstate()` is the last answering server's (e.g.
    /// "28P01", "3D000", "53300"); `transient()` is true when any host failed
    /// in a way a retry may cure (network-level failures, timeouts,
    /// transient SQLSTATEs), false when all were configuration mistakes
    /// (certificate problems, wrong or missing password, unknown database,
    /// failed setup statements). Cost: the startup handshake per host tried
    /// (a few round trips; more with TLS), one round trip per setup statement.
    handle continue_connect(attempt& a, clock::time_point deadline) const;

    /// Gives up a connect in progress (`PQfinish`: may write to its socket);
    /// `a` is empty afterwards. Cost: a close; no wait.
    void cancel_connect(attempt& a) const noexcept { a.state_.reset(); }

    /// Frees a connect in progress without one byte of I/O on its socket (as
    /// `abandon`): the only call allowed on an attempt inherited across
    /// `fork()`. `a` is empty afterwards.
    void abandon_connect(attempt& a) const noexcept;

    /// Opens a connection and runs the setup statements: `continue_connect`
    /// on a new attempt until `deadline`.
    ///
    /// Throws `connect_error` as `continue_connect` does, and when `deadline`
    /// comes first (transient, "timed out after N ms", with the hosts that
    /// refused before); the attempt is then cancelled.
    handle connect(clock::time_point deadline) const;

    /// Ends the session politely (`PQfinish`: sends Terminate, and a TLS
    /// close_notify). A command still running (`PQtransactionStatus` is
    /// active) is cancelled first, so that it does not run on in the server:
    /// `PQcancel` on a short-lived thread, then the command's end is awaited
    /// and its results dropped; while it has not ended (a cancel that reached
    /// the server before the command did is ignored there), the cancel is
    /// sent again after 100 ms, 200 ms, 400 ms...; all of it within
    /// `cancel_timeout`. A command already ended, its results unread, is not
    /// cancelled; when 8 cancels are in flight in the process, or the server
    /// refuses one, or a COPY runs, the connection is closed as it is. Cost:
    /// one write, no wait; with a command running, a thread and a TCP connect
    /// to the server per cancel, up to `cancel_timeout`. A null handle is
    /// ignored.
    void close(handle h) const noexcept;

    /// Ends a session the pool gave up on inside an acquire (it failed
    /// validation or expired): `PQfinish` without the cancel `close` would
    /// wait for, so the acquire keeps its bound. The only command such a
    /// connection can have running is a validation ping's empty query. Cost:
    /// one write, no wait. A null handle is ignored.
    void discard(handle h) const noexcept;

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
    /// connection; the close is still seen). False too for a connection of a
    /// watched `read-write` pool that showed a sign its server may have
    /// turned read-only (see `bind_epoch`) not yet confirmed by `reset`.
    /// Cost: one `poll()` syscall; when data is waiting, one read, a parse
    /// and one more `poll()`.
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
    /// succeeded. A connection of a watched `read-write` pool that showed a
    /// sign its server may have turned read-only (see `bind_epoch`): then
    /// asks the server, false (and the epoch moves) when it is. Everything
    /// together is bounded by `io_timeout`. Cost: none when idle without
    /// `discard_all`, else one round trip per statement (and one for a sign
    /// to confirm).
    bool reset(handle h, bool discard_all) const noexcept;

    /// "host=… port=… dbname=… user=…" of the server, for messages and logs.
    /// Never holds the password. Defaults libpq would apply from the
    /// environment or its compiled-in values are shown; a default host (the
    /// Unix socket directory) is left out.
    const std::string& description() const noexcept { return description_; }

    /// The time each host may take to connect, as resolved from
    /// `libpq_options::connect_timeout`, the connection string and the
    /// environment; `milliseconds::max()` when there is no limit of our own.
    std::chrono::milliseconds connect_timeout() const noexcept { return connect_timeout_; }

    /// The options given at construction.
    const libpq_options& options() const noexcept { return options_; }

    /// Called by the pool that owns this connector (and again with null when
    /// the pool goes): from then on, each connection it opens watches its
    /// server and moves `*epoch` when the server goes away or changes role,
    /// so that the pool retires every connection opened before. What counts
    /// is evidence about this server, not another one's nor the session's own
    /// doing: a FATAL (or PANIC) with SQLSTATE class 08, 57P01, 57P02 or
    /// 57P03 on an open connection (sent to an idle one included; the same
    /// codes in an ERROR, such as dblink's 08001, do not count); a connection
    /// found lost without a word by `probe`, `ping` or `reset`; a server whose
    /// reported `in_hot_standby` (PostgreSQL 14 and later report it when it
    /// changes) no longer fits `target_session_attrs` (for `prefer-standby`: a
    /// standby that was promoted); and with `target_session_attrs=read-write`,
    /// a server that turned read-only: an error 25006 (read-only transaction)
    /// or a reported `default_transaction_read_only` turned on is only a sign
    /// (the application's `BEGIN READ ONLY` or `SET` gives the same), which
    /// `reset` confirms by asking the server (`pg_is_in_recovery()`, and the
    /// setting a new session would get). Once per event: connections that saw the same event after
    /// the epoch moved do not move it again. Copies of the connector made
    /// before share no binding. Cost per connection: one small allocation;
    /// per result the application reads, libpq's event list copied into it
    /// and one call that reads the SQLSTATE (and, with
    /// `target_session_attrs`, two ParameterStatus lookups). Throws
    /// `std::bad_alloc`.
    void bind_epoch(std::atomic<std::uint64_t>* epoch) {
        if (!epoch) {
            if (binding_) binding_->epoch.store(nullptr, std::memory_order_release);
            return;
        }
        auto b = std::make_shared<detail::epoch_binding>();
        b->role = role_;
        b->epoch.store(epoch, std::memory_order_release);
        binding_ = std::move(b);
    }

    /// The epoch a connection this connector just opened reports against:
    /// the pool's at the time of the call, stamped on the connection. Called
    /// by the pool once, when it takes the connection.
    std::uint64_t birth_epoch(handle h) const noexcept {
        if (detail::connection_watch* w = detail::watch_of(h); w && w->binding) return detail::stamp_birth(h);
        std::atomic<std::uint64_t>* e = binding_ ? binding_->epoch.load(std::memory_order_acquire) : nullptr;
        return e ? e->load(std::memory_order_relaxed) : 0;
    }

private:
    friend struct detail::libpq_connector_access;
    using state = detail::libpq_attempt_state;

    static std::string_view checked_conninfo(const char* conninfo_or_uri) {
        if (!conninfo_or_uri)
            throw config_error("pqpool: the connection string is a null pointer (std::getenv of a variable "
                               "that is not set?)");
        return conninfo_or_uri;
    }

    [[noreturn]] void fail_connect(const std::string& what, std::string sqlstate, bool transient) const {
        throw connect_error("pqpool: cannot connect to " + description_ + ": " + what, std::move(sqlstate), transient);
    }
    std::string scrubbed(const state& s, std::string text) const {
        if (!s.secrets.empty()) {
            std::vector<std::string> all = secrets_;
            all.insert(all.end(), s.secrets.begin(), s.secrets.end());
            detail::scrub_tokens(text, all);
        } else {
            detail::scrub_tokens(text, secrets_);
        }
        return text;
    }

    void start_target(state& s) const;
    bool fetch_credentials(state& s, std::vector<std::string>& keywords, std::vector<std::string>& values) const;
    void note_socket(state& s, int fd) const noexcept;
    void forgive_parked_time(state& s) const noexcept;
    void refuse(state& s, std::string why, std::string sqlstate, bool transient, bool ends_attempt = false) const;
    void refuse_with_libpq_error(state& s) const;
    void refuse_with_libpq_text(state& s, std::string_view text, bool needs_password) const;
    void refuse_setup(state& s) const;
    std::string refusals(const state& s) const;
    [[noreturn]] void fail_refused(attempt& a) const;
    [[noreturn]] void fail_timed_out(attempt& a) const;
    bool confirm_role(handle h, detail::connection_watch& w, clock::time_point deadline) const noexcept;
    // `h` was found lost: its watch reports it (when no FATAL came first).
    static bool lost(handle h) noexcept {
        if (const detail::connection_watch* w = detail::watch_of(h)) w->saw_loss();
        return false;
    }

    libpq_options options_;
    std::vector<detail::connect_target> plan_; // the libpq connections an attempt makes, in order
    std::vector<std::string> secrets_;         // every form of every secret seen, to scrub from libpq's text
    std::string description_;
    std::chrono::milliseconds connect_timeout_{};
    detail::wanted_role role_ = detail::wanted_role::any; // target_session_attrs
    std::string user_, dbname_;                           // as libpq will use them, for the credentials callable
    std::shared_ptr<detail::recent_secrets> supplied_ = std::make_shared<detail::recent_secrets>();
    std::shared_ptr<detail::epoch_binding> binding_; // the owning pool's epoch, once bound
};

static_assert(connector<libpq_connector>);

// ---------------------------------------------------------------------------
// Implementation: in every translation unit when header-only, else only in the
// one that includes <pqpool/src.hpp> (see detail/config.hpp).

#if PQPOOL_DEFINITIONS

PQPOOL_DECL void libpq_connector::abandon_connect(attempt& a) const noexcept {
    if (a.state_) abandon(std::exchange(a.state_->conn, nullptr));
    a.state_.reset();
}

PQPOOL_DECL void libpq_connector::close(handle h) const noexcept {
    if (!h) return;
    if (PQstatus(h) == CONNECTION_OK && PQtransactionStatus(h) == PQTRANS_ACTIVE)
        detail::cancel_and_drain(h, options_.cancel_timeout);
    detail::finish(h);
}

PQPOOL_DECL void libpq_connector::discard(handle h) const noexcept {
    if (h) detail::finish(h);
}

PQPOOL_DECL void libpq_connector::abandon(handle h) const noexcept {
    if (h && detail::silence_socket(h)) detail::finish(h);
}

PQPOOL_DECL bool libpq_connector::ping(handle h, clock::time_point deadline) const noexcept {
    if (!h) return false;
    if (PQstatus(h) != CONNECTION_OK) return lost(h);
    const auto r = detail::exec_until(h, "", deadline, false);
    if (PQstatus(h) != CONNECTION_OK) return lost(h);
    return r.outcome == detail::exec_outcome::ok && r.last == PGRES_EMPTY_QUERY &&
           PQtransactionStatus(h) == PQTRANS_IDLE;
}

PQPOOL_DECL libpq_connector::libpq_connector(std::string_view conninfo_or_uri, libpq_options options)
    : options_(std::move(options)) {
    options_.check();
    detail::fork_gate::install();
    detail::parsed_conninfo ci = detail::parse_conninfo(conninfo_or_uri);
    detail::check_conninfo(ci);
    detail::libpq_defaults env;
    {
        // OpenSSL's locks (the TLS file checks) and NSS's (PQconndefaults
        // looks up the user's name) are never held at a fork: no wait, no
        // network I/O, so a fork waits at most for a few file reads.
        detail::fork_gate::step gate;
        detail::check_tls_files(ci, static_cast<bool>(options_.credentials));
        env = detail::libpq_defaults::read();
    }
    connect_timeout_ = detail::resolve_connect_timeout(ci, env, options_.connect_timeout);
    plan_ = detail::plan_connects(ci, env);
    description_ = detail::describe(ci, env);
    user_ = detail::resolved_value(ci, env, "user");
    dbname_ = detail::resolved_value(ci, env, "dbname");
    if (dbname_.empty() && !ci.get("service")) dbname_ = user_;
    if (const std::string* attrs = ci.get("target_session_attrs"))
        role_ = detail::wanted_role_of(*attrs);
    else if (const std::string* from_env = ci.get("service") ? nullptr : env.get("target_session_attrs"))
        role_ = detail::wanted_role_of(*from_env);
    secrets_ = std::move(ci.secrets);
    // PGPASSWORD and friends: libpq never echoes them, but cheap insurance.
    secrets_.insert(secrets_.end(), env.secrets.begin(), env.secrets.end());
}

// Calls libpq_options::credentials for the host about to be tried and merges
// what it gives into that host's keywords. False when the host is refused
// (the callable failed, or gave what it may not).
PQPOOL_DECL bool libpq_connector::fetch_credentials(state& s, std::vector<std::string>& keywords,
                                                    std::vector<std::string>& values) const {
    const detail::connect_target& t = plan_[s.target];
    connect_credentials c;
    auto failed = [&](std::string why, std::string sqlstate, bool transient) {
        supplied_->scrub(why);
        refuse(s, "the credentials callable failed: " + scrubbed(s, std::move(why)), std::move(sqlstate), transient);
        return false;
    };
    try {
        // Inside the fork gate: whatever locks the callable takes (its HTTP
        // client's, OpenSSL's, its own cache's) are never held at a fork.
        detail::fork_gate::step gate;
        c = options_.credentials(connect_host{t.host, t.hostaddr, t.port, dbname_, user_});
    } catch (const connect_error& e) {
        return failed(e.what(), e.sqlstate(), e.transient());
    } catch (const config_error& e) {
        return failed(e.what(), {}, false);
    } catch (const std::exception& e) {
        return failed(e.what(), {}, true);
    } catch (...) {
        return failed("it threw something that is not a std::exception", {}, true);
    }
    s.secrets.clear();
    s.password_supplied = !c.password.empty();
    if (std::optional<std::string> refused =
            detail::merge_credentials(c, detail::libpq_vocabulary(), keywords, values, s.secrets)) {
        refuse(s, std::move(*refused), {}, false, true);
        return false;
    }
    supplied_->add(s.secrets);
    return true;
}

PQPOOL_DECL void libpq_connector::start_target(state& s) const {
    const detail::connect_target& t = plan_[s.target];
    std::vector<std::string> owned_keywords, owned_values; // with credentials only
    const std::vector<std::string>* kw = &t.keywords;
    const std::vector<std::string>* val = &t.values;
    if (options_.credentials) {
        owned_keywords = t.keywords;
        owned_values = t.values;
        if (!fetch_credentials(s, owned_keywords, owned_values)) return;
        kw = &owned_keywords;
        val = &owned_values;
    }
    std::vector<const char*> keywords, values;
    keywords.reserve(kw->size() + 1);
    values.reserve(val->size() + 1);
    for (std::size_t i = 0; i < kw->size(); ++i) {
        keywords.push_back((*kw)[i].c_str());
        values.push_back((*val)[i].c_str());
    }
    keywords.push_back(nullptr);
    values.push_back(nullptr);
    {
        detail::fork_gate::step gate;
        // expand_dbname = 0: a URI was already taken apart by PQconninfoParse.
        s.conn = PQconnectStartParams(keywords.data(), values.data(), 0);
    }
    if (!s.conn) return refuse(s, "out of memory", {}, true);
    // Makes a server's FATAL carry its SQLSTATE in the message (see
    // parse_connect_failure); set before any byte from the server is read.
    PQsetErrorVerbosity(s.conn, PQERRORS_VERBOSE);
    // libpq's protocol: before the first PQconnectPoll, act as if it had
    // asked to wait for writability.
    s.polling = PGRES_POLLING_WRITING;
    s.in_setup = false;
    s.fd = -1;
    s.step_deadline = saturating_add(clock::now(), connect_timeout_);
    if (PQstatus(s.conn) == CONNECTION_BAD) refuse_with_libpq_error(s);
}

PQPOOL_DECL void libpq_connector::note_socket(state& s, int fd) const noexcept {
    struct stat st {};
    const ino_t inode = ::fstat(fd, &st) == 0 ? st.st_ino : 0;
    if (fd == s.fd && inode == s.inode) return;
    if (s.fd >= 0) s.step_deadline = saturating_add(clock::now(), connect_timeout_);
    s.fd = fd;
    s.inode = inode;
}

PQPOOL_DECL void libpq_connector::forgive_parked_time(state& s) const noexcept {
    s.parked = false;
    if (!s.conn) return;
    const int fd = PQsocket(s.conn);
    if (fd < 0) return;
    // In setup, only an answer counts: the socket is nearly always writable.
    const short events = s.in_setup || s.polling == PGRES_POLLING_READING ? POLLIN : POLLOUT;
    pollfd p{fd, events, 0};
    if (::poll(&p, 1, 0) > 0) s.step_deadline = saturating_add(s.step_deadline, clock::now() - s.parked_at);
}

// `ends_attempt`: the server refused; the hosts after it are not tried.
PQPOOL_DECL void libpq_connector::refuse(state& s, std::string why, std::string sqlstate, bool transient,
                                         bool ends_attempt) const {
    s.refusals.push_back({plan_[s.target].label, std::move(why)});
    if (!sqlstate.empty()) s.sqlstate = std::move(sqlstate);
    s.transient = s.transient || transient;
    detail::finish(std::exchange(s.conn, nullptr));
    s.in_setup = false;
    s.target = ends_attempt ? plan_.size() : s.target + 1;
}

PQPOOL_DECL void libpq_connector::refuse_with_libpq_error(state& s) const {
    refuse_with_libpq_text(s, PQerrorMessage(s.conn), PQconnectionNeedsPassword(s.conn) != 0);
}

PQPOOL_DECL void libpq_connector::refuse_with_libpq_text(state& s, std::string_view text, bool needs_password) const {
    auto f = detail::parse_connect_failure(text, needs_password);
    // As libpq: a server that answered with an error ends the attempt (the
    // documented "authentication failed: the remaining hosts are not
    // tried"), unless it is only not ready yet (57P03, a standby starting up).
    const bool ends_attempt = needs_password || (!f.sqlstate.empty() && f.sqlstate != "57P03");
    // A password the credentials callable gave that the server refuses may
    // have rotated since: the next attempt asks the callable again.
    if (s.password_supplied && f.sqlstate == "28P01") {
        f.transient = true;
        f.text += " (the password came from libpq_options::credentials: retried, in case it has just changed)";
    }
    refuse(s, scrubbed(s, std::move(f.text)), std::move(f.sqlstate), f.transient, ends_attempt);
}

PQPOOL_DECL void libpq_connector::refuse_setup(state& s) const {
    const detail::exec_result& r = s.run.result();
    std::string what = "setup[" + std::to_string(s.setup_index) + "] failed: ";
    if (r.outcome == detail::exec_outcome::timeout)
        what += "timed out after " + detail::show_ms(options_.io_timeout);
    else
        what += scrubbed(s, r.message);
    if (r.sqlstate[0]) what += std::string(" (SQLSTATE ") + r.sqlstate + ")";
    // The server refused the statement: a retry will not change its mind, and
    // another host will not either. A connection lost or too slow on the way
    // is a network matter.
    const bool refused = r.outcome == detail::exec_outcome::server_error;
    refuse(s, std::move(what), r.sqlstate, !refused, refused);
}

PQPOOL_DECL std::string libpq_connector::refusals(const state& s) const {
    return detail::describe_refusals(s.refusals, plan_.size() == 1);
}

PQPOOL_DECL libpq_connector::handle libpq_connector::continue_connect(attempt& a, clock::time_point deadline) const {
    if (!a.state_) {
        a.state_ = std::make_unique<state>();
        a.state_->started = clock::now();
    }
    state& s = *a.state_;
    if (s.parked) forgive_parked_time(s);
    auto park = [&] {
        s.parked = true;
        s.parked_at = clock::now();
        return handle{};
    };
    for (;;) {
        if (!s.conn) {
            if (s.target >= plan_.size()) fail_refused(a);
            start_target(s);
            continue;
        }
        if (!s.in_setup) {
            const int fd = PQsocket(s.conn);
            if (fd < 0) {
                refuse_with_libpq_error(s);
                continue;
            }
            note_socket(s, fd);
            const short events = s.polling == PGRES_POLLING_READING ? POLLIN : POLLOUT;
            const int ev = detail::wait_for(fd, events, std::min(deadline, s.step_deadline), false);
            if (ev < 0) {
                const int e = errno;
                refuse(s, std::string("poll() failed: ") + std::strerror(e), {}, true);
                continue;
            }
            if (ev == 0) {
                if (clock::now() < s.step_deadline) return park();
                refuse(s, "timed out after " + detail::show_ms(connect_timeout_), {}, true);
                continue;
            }
            PostgresPollingStatusType st;
            {
                detail::fork_gate::step gate;
                st = PQconnectPoll(s.conn);
            }
            if (st == PGRES_POLLING_FAILED) {
                refuse_with_libpq_error(s);
            } else if (st != PGRES_POLLING_OK) {
                s.polling = st;
            } else {
                PQsetErrorVerbosity(s.conn, PQERRORS_DEFAULT);
                s.in_setup = true;
                s.setup_index = 0;
                s.setup_sent = false;
                // Non-blocking while the setup runs, so that a full send
                // buffer cannot block; blocking again (libpq's default) after.
                if (!options_.setup.empty() && PQsetnonblocking(s.conn, 1) != 0) {
                    s.run = {};
                    s.run.fail(detail::exec_outcome::io_error, PQerrorMessage(s.conn));
                    refuse_setup(s);
                }
            }
            continue;
        }
        if (s.setup_index == options_.setup.size()) {
            if (!options_.setup.empty()) PQsetnonblocking(s.conn, 0);
            handle done = std::exchange(s.conn, nullptr);
            detail::watch_connection(done, binding_);
            a.state_.reset();
            return done;
        }
        if (!s.setup_sent) {
            s.setup_sent = true;
            s.run = {};
            s.step_deadline = saturating_add(clock::now(), options_.io_timeout);
            if (!s.run.send(s.conn, options_.setup[s.setup_index].c_str(), true)) {
                refuse_setup(s);
                continue;
            }
        }
        if (!s.run.drive(s.conn, std::min(deadline, s.step_deadline), false)) {
            if (clock::now() < s.step_deadline) return park();
            s.run.fail(detail::exec_outcome::timeout, "timed out");
            refuse_setup(s);
            continue;
        }
        if (s.run.result().outcome != detail::exec_outcome::ok) {
            refuse_setup(s);
            continue;
        }
        ++s.setup_index;
        s.setup_sent = false;
    }
}

// Every host of the plan refused: the attempt ends with why each did.
PQPOOL_DECL void libpq_connector::fail_refused(attempt& a) const {
    state& s = *a.state_;
    const std::string what = refusals(s);
    std::string sqlstate = std::move(s.sqlstate);
    const bool transient = s.transient;
    a.state_.reset();
    fail_connect(what, std::move(sqlstate), transient);
}

// connect()'s deadline came first: the attempt is cancelled, and the hosts
// that refused before are named.
PQPOOL_DECL void libpq_connector::fail_timed_out(attempt& a) const {
    const state& s = *a.state_;
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - s.started).count();
    std::string what = "timed out after " + std::to_string(ms) + " ms";
    if (!s.refusals.empty()) what += " (before: " + refusals(s) + ")";
    std::string sqlstate = s.sqlstate;
    cancel_connect(a);
    fail_connect(what, std::move(sqlstate), true);
}

PQPOOL_DECL libpq_connector::handle libpq_connector::connect(clock::time_point deadline) const {
    attempt a;
    if (handle h = continue_connect(a, deadline)) return h;
    fail_timed_out(a);
}

PQPOOL_DECL bool libpq_connector::probe(handle h) const noexcept {
    if (!h) return false;
    if (PQstatus(h) != CONNECTION_OK) return lost(h);
    // A sign that its server may have turned read-only, not confirmed on its
    // return (no reset): not handed out unchecked. (A report that came with
    // the last result is only seen now: libpq hands the result out first.)
    if (detail::connection_watch* w = detail::watch_of(h)) {
        w->check_role(h);
        if (w->suspect) return false;
    }
    if (PQtransactionStatus(h) != PQTRANS_IDLE) return false;
    const int fd = PQsocket(h);
    if (fd < 0) return lost(h);
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
        if (p.revents & POLLNVAL) return lost(h);
        const bool hangup = (p.revents & (detail::poll_rdhup | POLLHUP | POLLERR)) != 0;
        // Data, or a hang-up: a NOTIFY, ParameterStatus or notice, or the
        // server's last words (a FATAL, a TLS close_notify) before it closes.
        // Read and parse it first, so that a FATAL is judged by its SQLSTATE:
        // EOF or a close_notify turns the status BAD, a FATAL reaches the
        // notice receiver; notifications stay queued for the application.
        detail::fatal_notice_seen = false;
        const bool read = PQconsumeInput(h) != 0;
        if (read) (void)PQisBusy(h); // parses the input
        if (detail::fatal_notice_seen) return false;
        if (!read || hangup || PQstatus(h) != CONNECTION_OK) return lost(h);
    }
    return true;
}

PQPOOL_DECL bool libpq_connector::reset(handle h, bool discard_all) const noexcept {
    if (!h) return false;
    if (PQstatus(h) != CONNECTION_OK) return lost(h);
#ifdef LIBPQ_HAS_PIPELINING
    if (PQpipelineStatus(h) != PQ_PIPELINE_OFF) return false;
#endif
    const auto deadline = saturating_add(clock::now(), options_.io_timeout);
    auto run = [&](const char* sql) {
        if (detail::exec_until(h, sql, deadline, false).outcome == detail::exec_outcome::ok)
            return PQtransactionStatus(h) == PQTRANS_IDLE;
        return PQstatus(h) == CONNECTION_OK ? false : lost(h);
    };
    switch (PQtransactionStatus(h)) {
    case PQTRANS_IDLE: break;
    case PQTRANS_INTRANS:
    case PQTRANS_INERROR:
        if (!run("ROLLBACK")) return false;
        break;
    default: // ACTIVE (a command running or results unread, COPY) or UNKNOWN
        return false;
    }
    if (discard_all && !run("DISCARD ALL")) return false;
    if (detail::connection_watch* w = detail::watch_of(h)) {
        w->check_role(h); // a report that came after the last result
        if (w->suspect) return confirm_role(h, *w, deadline);
    }
    return true;
}

// The connection saw a sign that its server may have turned read-only (see
// connection_watch): ask the server. In recovery, and the
// default_transaction_read_only a new session would get (reset_val: the
// server's, the role's or the database's setting, not this session's SET).
// False (close it) when the role no longer fits, which moves the epoch, or
// when the question failed.
PQPOOL_DECL bool libpq_connector::confirm_role(handle h, detail::connection_watch& w,
                                               clock::time_point deadline) const noexcept {
    static constexpr const char* question =
        "SELECT pg_catalog.pg_is_in_recovery(), (SELECT s.reset_val FROM pg_catalog.pg_settings s "
        "WHERE s.name = 'default_transaction_read_only')";
    std::vector<std::string> row;
    const auto r = detail::exec_until(h, question, deadline, false, &row);
    if (r.outcome != detail::exec_outcome::ok || row.size() != 2 || PQtransactionStatus(h) != PQTRANS_IDLE)
        return PQstatus(h) == CONNECTION_OK ? false : lost(h);
    return !w.confirm(row[0] == "t", row[1] == "on");
}

#endif // PQPOOL_DEFINITIONS

} // namespace pqpool
