#pragma once

// The connector's bounded I/O on libpq connections: the poll() wait,
// statements sent and read in resumable steps (the exec loop of setup
// statements, pings and resets), the cancel of a running command, and closing
// a connection with or without a byte on its socket. Every wait has a
// deadline.

#include <pqpool/deadline.hpp>
#include <pqpool/detail/fork_gate.hpp>

#include <libpq-fe.h>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace pqpool::detail {

using io_clock = std::chrono::steady_clock;

// poll()'s "the peer shut down its side", Linux-only; elsewhere a hang-up still
// shows as POLLHUP, or as POLLIN followed by EOF in PQconsumeInput.
#ifdef POLLRDHUP
inline constexpr short poll_rdhup = POLLRDHUP;
#else
inline constexpr short poll_rdhup = 0;
#endif

// Waits until `fd` shows one of `events`; returns its revents, 0 when
// `deadline` came first, -1 when poll() fails.
//
// `strict`: once the deadline has passed, not even a look (a ping or a reset
// starts nothing late). Otherwise one look without waiting is always taken: a
// connect attempt makes the progress that needs no waiting even for a caller
// whose time is up, so that short waits can still finish a handshake in steps.
inline int wait_for(int fd, short events, io_clock::time_point deadline, bool strict) noexcept {
    for (bool first = true;; first = false) {
        const auto now = io_clock::now();
        if (now >= deadline && (strict || !first)) return 0;
        // Rounded up so poll() never wakes before the deadline and spins.
        const long long ms =
            now >= deadline
                ? 0
                : std::min<long long>(std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count(), INT_MAX);
        pollfd p{fd, events, 0};
        const int n = ::poll(&p, 1, static_cast<int>(ms));
        if (n > 0) return p.revents;
        if (n < 0 && errno != EINTR) return -1;
    }
}

// PQfinish under the fork gate: it frees TLS state under OpenSSL's locks.
inline void finish(PGconn* c) noexcept {
    if (!c) return;
    fork_gate::step gate;
    PQfinish(c);
}

// Points the connection's socket at /dev/null, so that nothing PQfinish
// writes (Terminate, a TLS close_notify) reaches a socket shared with another
// process. False when that cannot be done: then the caller must not PQfinish.
inline bool silence_socket(PGconn* c) noexcept {
    const int fd = PQsocket(c);
    if (fd < 0) return true;
    const int devnull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0) return false;
    int r;
    // EBUSY: Linux's dup2 racing an open() of the same number in another thread.
    do r = ::dup2(devnull, fd);
    while (r < 0 && (errno == EINTR || errno == EBUSY));
    ::close(devnull);
    return r >= 0;
}

// ---------------------------------------------------------------------------
// Statements

enum class exec_outcome { ok, server_error, io_error, timeout };

struct exec_result {
    exec_outcome outcome = exec_outcome::ok;
    ExecStatusType last = PGRES_COMMAND_OK; // status of the first failed result, else of the last one
    char sqlstate[6] = {};                  // of the first failed result, if the server sent one
    std::string message;                    // filled on failure only, and only when asked for
};

// One statement sent and its results read, in steps that never wait past a
// deadline: `drive` returns false when the deadline comes first and may be
// called again later (a connect attempt's setup statements resume where they
// stopped). The connection must be in non-blocking mode, so that a full send
// buffer cannot block PQsendQuery or PQflush.
class statement_run {
public:
    // False, with result() filled, when the statement could not be sent.
    bool send(PGconn* h, const char* sql, bool want_message) {
        want_message_ = want_message;
        if (PQsocket(h) < 0 || PQstatus(h) != CONNECTION_OK || !PQsendQuery(h, sql))
            return fail(exec_outcome::io_error, PQerrorMessage(h));
        return true;
    }

    // True when the statement is done (ok or not: see result()).
    bool drive(PGconn* h, io_clock::time_point deadline, bool strict) {
        const int fd = PQsocket(h);
        if (fd < 0) return fail(exec_outcome::io_error, PQerrorMessage(h));
        while (!flushed_) {
            const int f = PQflush(h);
            if (f == 0) {
                flushed_ = true;
                break;
            }
            if (f < 0) return fail(exec_outcome::io_error, PQerrorMessage(h));
            // As libpq's docs ask: while output is pending, also read, or a
            // server blocked on its own full send buffer would deadlock us.
            const int ev = wait_for(fd, POLLOUT | POLLIN, deadline, strict);
            if (ev == 0) return false;
            if (ev < 0) return fail(exec_outcome::io_error, "poll() failed");
            if ((ev & POLLIN) && !PQconsumeInput(h)) return fail(exec_outcome::io_error, PQerrorMessage(h));
        }
        for (;;) {
            while (!PQisBusy(h)) {
                PGresult* res = PQgetResult(h);
                if (!res) {
                    // The connection broke mid-way: a network failure, not the server refusing the SQL.
                    if (failed_ && PQstatus(h) != CONNECTION_OK) r_.outcome = exec_outcome::io_error;
                    return true;
                }
                if (!take(res)) return true;
            }
            const int ev = wait_for(fd, POLLIN, deadline, strict);
            if (ev == 0) return false;
            if (ev < 0) return fail(exec_outcome::io_error, "poll() failed");
            if (!PQconsumeInput(h)) return fail(exec_outcome::io_error, PQerrorMessage(h));
        }
    }

    const exec_result& result() const noexcept { return r_; }

    // Keep the values of the first row of the first result that has rows.
    void keep_first_row(std::vector<std::string>* row) noexcept { row_ = row; }

    // Marks the run failed with `text` (trimmed); returns true ("done").
    bool fail(exec_outcome why, const char* text) {
        r_.outcome = why;
        if (want_message_) {
            r_.message = text && *text ? text : "connection lost";
            while (!r_.message.empty() && (r_.message.back() == '\n' || r_.message.back() == ' '))
                r_.message.pop_back();
        }
        return true;
    }

private:
    // Takes one result; false when reading must stop here.
    bool take(PGresult* res) {
        const ExecStatusType st = PQresultStatus(res);
        if (!failed_) r_.last = st;
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            // Cannot be drained without speaking COPY; the caller closes the connection.
            PQclear(res);
            failed_ = true;
            fail(exec_outcome::server_error, "the statement started a COPY, which is not supported here");
            return false;
        }
        if (st == PGRES_TUPLES_OK && row_ && row_->empty() && PQntuples(res) > 0) {
            for (int i = 0; i < PQnfields(res); ++i) row_->emplace_back(PQgetvalue(res, 0, i));
        }
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY && !failed_) {
            failed_ = true;
            if (const char* code = PQresultErrorField(res, PG_DIAG_SQLSTATE)) {
                std::strncpy(r_.sqlstate, code, 5);
                r_.sqlstate[5] = '\0';
            }
            if (want_message_) {
                // Terse: no "LINE 1: <statement>" echo, so no statement text in the message.
                char* text = PQresultVerboseErrorMessage(res, PQERRORS_TERSE, PQSHOW_CONTEXT_NEVER);
                fail(exec_outcome::server_error, text ? text : PQresultErrorMessage(res));
                PQfreemem(text);
            } else {
                r_.outcome = exec_outcome::server_error;
            }
        }
        PQclear(res);
        return true;
    }

    exec_result r_;
    std::vector<std::string>* row_ = nullptr;
    bool flushed_ = false, failed_ = false, want_message_ = false;
};

// Runs `sql` on an idle connection and reads every result, never waiting past
// `deadline`; once it has passed, nothing is sent, so a caller that had no
// time left does not lose a clean connection. `row`: where to keep the
// values of the first row, if wanted.
inline exec_result exec_until(PGconn* h, const char* sql, io_clock::time_point deadline, bool want_message,
                              std::vector<std::string>* row = nullptr) {
    statement_run run;
    run.keep_first_row(row);
    if (PQsocket(h) < 0 || PQstatus(h) != CONNECTION_OK) {
        run.send(h, sql, want_message); // fails and fills the message
        return run.result();
    }
    if (io_clock::now() >= deadline) {
        exec_result r;
        r.outcome = exec_outcome::timeout;
        if (want_message) r.message = "timed out";
        return r;
    }
    // Non-blocking while we own the socket; the caller's mode comes back after.
    const bool was_nonblocking = PQisnonblocking(h) != 0;
    if (!was_nonblocking && PQsetnonblocking(h, 1) != 0) {
        run.fail(exec_outcome::io_error, PQerrorMessage(h));
        return run.result();
    }
    if (run.send(h, sql, want_message) && !run.drive(h, deadline, true)) run.fail(exec_outcome::timeout, "timed out");
    if (!was_nonblocking) PQsetnonblocking(h, 0);
    return run.result();
}

// ---------------------------------------------------------------------------
// Cancelling a running command

// PQcancel takes no timeout: a cancel whose connection is accepted and never
// answered (a hung server, or a proxy or load balancer in front of one) waits
// until the connection's keepalives or tcp_user_timeout end it, or forever
// when the peer keeps acknowledging. So at most this many cancels are in
// flight per process; beyond it, close() closes without cancelling (the
// command runs on in the server until it ends or the server notices the
// client is gone).
inline constexpr int max_cancels_in_flight = 8;

// The cancels in flight in this process. A child starts at zero: its
// parent's cancel threads do not exist there.
inline std::atomic<int>& cancels_in_flight() noexcept {
    static std::atomic<int>* const n = [] {
        auto* p = new std::atomic<int>{0}; // never destroyed: a cancel thread may outlive static destruction
        ::pthread_atfork(nullptr, nullptr, [] { cancels_in_flight().store(0, std::memory_order_relaxed); });
        return p;
    }();
    return *n;
}

// Asks the server to cancel what `h` is running, waiting at most `timeout`.
//
// libpq 15's PQcancel blocks (its own TCP connect, a write, a read until the
// server closes) and takes no timeout; it does apply the connection's
// keepalive and tcp_user_timeout settings. So it runs on a short-lived
// detached thread that owns everything it uses (a copy of the cancel key and
// address, and the flag below: nothing of the connection, connector or pool,
// so it may outlive them all, and the process's static destruction), and the
// caller waits for it at most `timeout`; a slower cancel finishes (or fails)
// on its own. At most max_cancels_in_flight at once per process; when they
// are all taken, or no thread can be made, nothing is cancelled. True when
// the server took the cancel request within `timeout`. PQcancel
// takes no lock a fork could leave held (no resolver, no TLS in libpq 15).
inline bool cancel_running(PGconn* h, std::chrono::milliseconds timeout) noexcept {
    std::atomic<int>& in_flight = cancels_in_flight();
    if (in_flight.fetch_add(1, std::memory_order_acq_rel) >= max_cancels_in_flight) {
        in_flight.fetch_sub(1, std::memory_order_acq_rel);
        return false;
    }
    PGcancel* cancel = PQgetCancel(h);
    if (!cancel) {
        in_flight.fetch_sub(1, std::memory_order_acq_rel);
        return false;
    }
    struct done_flag {
        std::mutex m;
        std::condition_variable cv;
        bool done = false;
        bool sent = false; // PQcancel succeeded
    };
    std::shared_ptr<done_flag> flag;
    try {
        flag = std::make_shared<done_flag>();
        std::thread([cancel, flag, &in_flight] {
            char err[256];
            const bool sent = PQcancel(cancel, err, sizeof err) != 0;
            PQfreeCancel(cancel);
            in_flight.fetch_sub(1, std::memory_order_acq_rel);
            {
                const std::lock_guard<std::mutex> lock(flag->m);
                flag->done = true;
                flag->sent = sent;
            }
            flag->cv.notify_all();
        }).detach();
    } catch (...) {
        PQfreeCancel(cancel);
        in_flight.fetch_sub(1, std::memory_order_acq_rel);
        return false;
    }
    std::unique_lock<std::mutex> lock(flag->m);
    return flag->cv.wait_until(lock, saturating_add(io_clock::now(), timeout), [&] { return flag->done; }) &&
           flag->sent;
}

// Reads and drops what has come of the command `h` runs, without waiting:
// `ended` when it is over, `running` when more is to come, `stuck` when the
// connection is lost or a COPY started (which cannot be drained here). In
// pipeline mode a null result ends one query of several; two in a row with
// nothing between mean nothing more is at hand (never spun on).
enum class drain_state { ended, running, stuck };
inline drain_state drain_ready(PGconn* h) noexcept {
    if (!PQconsumeInput(h)) return drain_state::stuck;
    int nulls = 0;
    while (!PQisBusy(h)) {
        PGresult* r = PQgetResult(h);
        if (!r) {
            if (PQpipelineStatus(h) == PQ_PIPELINE_OFF || PQtransactionStatus(h) != PQTRANS_ACTIVE)
                return drain_state::ended;
            if (++nulls > 1) return drain_state::running;
            continue;
        }
        nulls = 0;
        const ExecStatusType st = PQresultStatus(r);
        PQclear(r);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) return drain_state::stuck;
    }
    return drain_state::running;
}

// Cancels what `h` runs and waits, `timeout` at most in all, for the command
// to end, dropping its results. A command that has ended already (its results
// only unread) is not cancelled. A cancel that reaches the backend before the
// command does (still on its way, or not yet read: a lease returned right
// after it sent a query) is ignored by the server, and the command would run
// on after the close; so while the command has not ended, the cancel is sent
// again, after 100 ms, then 200, 400... (so too for each query of a
// pipeline). Stops when a cancel could not be sent or the server refused it,
// the connection is lost, or a COPY started.
inline void cancel_and_drain(PGconn* h, std::chrono::milliseconds timeout) noexcept {
    const auto end = saturating_add(io_clock::now(), timeout);
    auto gap = std::chrono::milliseconds{100};
    for (;;) {
        if (drain_ready(h) != drain_state::running) return;
        const auto now = io_clock::now();
        if (now >= end) return;
        if (!cancel_running(h, std::chrono::ceil<std::chrono::milliseconds>(end - now))) return;
        const auto look_until = std::min(end, saturating_add(io_clock::now(), gap));
        gap *= 2;
        for (;;) { // read as it comes until the command ends, or time to cancel again
            const int ev = wait_for(PQsocket(h), POLLIN, look_until, true);
            if (ev < 0) return;
            if (ev == 0) break;
            if (drain_ready(h) != drain_state::running) return;
        }
    }
}

} // namespace pqpool::detail
