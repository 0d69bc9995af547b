#pragma once

// What the connector watches on each connection it opened, without a round
// trip of its own:
// - a FATAL the server sent to an idle connection, seen by probe() as soon as
//   it has arrived (the notice receiver);
// - whether the server went away or changed role, from what libpq sees anyway
//   on the connection: then the pool's invalidation epoch moves, once per
//   event, and every connection the pool opened before is retired instead of
//   handed out.
//
// Only evidence about the pool's own server moves the epoch:
// - the connection itself ended: found lost without a word, or ended by a
//   FATAL (or PANIC) that says the server is going away (class 08,
//   57P01-57P03; see server_gone). An ERROR with those codes leaves the
//   session open and is about another server (dblink's 08001);
// - the server's own state: in_hot_standby, which no session can set, as the
//   server reports it (a promotion).
// Signs that the session may have caused itself are only suspicions: a 25006
// on a read-write pool (BEGIN READ ONLY), a reported
// default_transaction_read_only that no longer fits (SET
// default_transaction_read_only). The connector confirms a suspicion with
// the server (pg_is_in_recovery() and the setting's value for a new session)
// when the connection comes back to the pool (reset), and moves the epoch
// only when the server really is read-only; a suspect connection that was not
// checked that way is not handed out again (probe refuses it).
//
// libpq's event procedures (libpq-events.h) carry this: each connection gets
// its own watch as instance data, freed with the connection, which keeps the
// binding to the pool alive as long as it needs it. Cost per result the
// application reads: libpq copies the event list into the result (a small
// allocation), then one call here that reads the SQLSTATE field and, for a
// pool that asked for a role, two ParameterStatus lookups.

#include <pqpool/detail/connect_failure.hpp>

#include <libpq-events.h>
#include <libpq-fe.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string_view>

namespace pqpool::detail {

// A pool's invalidation epoch as its connector sees it: bound by the pool
// when it is built, unbound when it goes. Shared by the connector and every
// connection it opened since.
struct epoch_binding {
    std::atomic<std::atomic<std::uint64_t>*> epoch{nullptr};
    wanted_role role = wanted_role::any;
};

inline bool reported_on(const char* value) noexcept { return value && std::string_view(value) == "on"; }

// One connection's watch: its libpq instance data.
struct connection_watch {
    std::shared_ptr<epoch_binding> binding; // null: no pool watches (a connector used on its own)
    std::uint64_t born = 0;                 // the pool's epoch when the connection was opened
    bool was_standby = false;               // in_hot_standby was on at connect
    bool fatal_seen = false;                // the server sent a FATAL or PANIC on it
    bool standby_seen = false;              // in_hot_standby as last reported
    bool read_only_seen = false;            // default_transaction_read_only as last reported
    bool suspect = false;                   // a sign the session may have caused: to be confirmed

    // The server went away or changed role: every connection opened before
    // this one's birth epoch moves on is retired. Once per event: a second
    // connection (or this one again) that saw the same event finds the epoch
    // already past its birth and changes nothing, so connections opened since
    // are not retired for an old event.
    void report() const noexcept {
        if (!binding) return;
        if (std::atomic<std::uint64_t>* e = binding->epoch.load(std::memory_order_acquire)) {
            std::uint64_t expected = born;
            e->compare_exchange_strong(expected, born + 1, std::memory_order_relaxed);
        }
    }

    // An error with `sqlstate` and `severity` (either may be null) arrived on `conn`.
    void saw_error(const char* sqlstate, const char* severity) noexcept {
        const std::string_view sev = severity ? severity : "";
        if (sev == "FATAL" || sev == "PANIC") fatal_seen = true;
        if (!binding) return;
        const std::string_view code = sqlstate ? sqlstate : "";
        if (server_gone(code, sev))
            report();
        else if (read_only_suspected(code, binding->role))
            suspect = true;
    }

    // After each result (and when the connection comes back: libpq hands a
    // result out before it reads the ParameterStatus that follows it, so a
    // SET's own report is seen only then): did the server's reported role
    // change? A change of
    // in_hot_standby is the server's own; one of default_transaction_read_only
    // may be this session's SET: a suspicion. Only a change is looked at, so a
    // session that keeps such a setting is confirmed once, not at every return.
    // A server before 14 reports neither: nothing to see.
    void check_role(const PGconn* conn) noexcept {
        if (!binding || binding->role == wanted_role::any) return;
        saw_role(PQparameterStatus(conn, "in_hot_standby"), PQparameterStatus(conn, "default_transaction_read_only"));
    }
    void saw_role(const char* in_hot_standby, const char* default_read_only) noexcept {
        if (!binding || !in_hot_standby) return;
        const bool standby = reported_on(in_hot_standby);
        const bool read_only = reported_on(default_read_only);
        if (standby == standby_seen && read_only == read_only_seen) return;
        const bool standby_changed = standby != standby_seen;
        standby_seen = standby;
        read_only_seen = read_only;
        if (!role_lost(binding->role, standby, read_only, was_standby)) return;
        if (standby_changed)
            report();
        else
            suspect = true;
    }

    // What the server said when asked (see confirm_role in libpq.hpp): in
    // recovery or not, and default_transaction_read_only as a new session
    // would get it. True when the role no longer fits: the epoch moved.
    bool confirm(bool standby, bool default_read_only) noexcept {
        suspect = false;
        if (!binding || !role_lost(binding->role, standby, default_read_only, was_standby)) return false;
        report();
        return true;
    }

    // The connection was found lost (CONNECTION_BAD, a hang-up) with no FATAL
    // before it: the server or the path to it went away without a word, which
    // is libpq's connection failure (SQLSTATE class 08 in other drivers). A
    // connection the server closed after a FATAL was judged by its SQLSTATE.
    void saw_loss() const noexcept {
        if (!fatal_seen) report();
    }
};

inline int watch_events(PGEventId id, void* info, void* pass_through);

inline connection_watch* watch_of(const PGconn* conn) noexcept {
    return static_cast<connection_watch*>(PQinstanceData(conn, &watch_events));
}

// libpq's event procedure: every result created on the connection (the
// application's, and the pool's own pings and resets), and the connection's
// end. (A connection lost in the middle of a query gives its error result
// without an event: reset() and probe() see that loss.)
inline int watch_events(PGEventId id, void* info, void*) {
    switch (id) {
    case PGEVT_RESULTCREATE: {
        auto* e = static_cast<PGEventResultCreate*>(info);
        connection_watch* w = watch_of(e->conn);
        if (!w) break;
        if (PQresultStatus(e->result) == PGRES_FATAL_ERROR)
            w->saw_error(PQresultErrorField(e->result, PG_DIAG_SQLSTATE),
                         PQresultErrorField(e->result, PG_DIAG_SEVERITY_NONLOCALIZED));
        w->check_role(e->conn);
        break;
    }
    case PGEVT_CONNDESTROY: delete watch_of(static_cast<PGEventConnDestroy*>(info)->conn); break;
    default: break;
    }
    return 1;
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
    if (severity && (std::strcmp(severity, "FATAL") == 0 || std::strcmp(severity, "PANIC") == 0)) {
        fatal_notice_seen = true;
        if (auto* w = static_cast<connection_watch*>(arg))
            w->saw_error(PQresultErrorField(res, PG_DIAG_SQLSTATE), severity);
    }
    if (PQnoticeReceiver next = default_notice_receiver.load(std::memory_order_relaxed)) next(arg, res);
}

// Installs the watch on a connection that has just opened. Best effort: when
// libpq or the allocator cannot take it, the connection works unwatched (the
// FATAL notice is still seen by probe()).
inline void watch_connection(PGconn* c, const std::shared_ptr<epoch_binding>& binding) noexcept {
    connection_watch* w = nullptr;
    if (PQregisterEventProc(c, &watch_events, "pqpool", nullptr)) {
        w = new (std::nothrow) connection_watch;
        if (w) {
            w->binding = binding; // copying a shared_ptr does not throw
            w->was_standby = w->standby_seen = reported_on(PQparameterStatus(c, "in_hot_standby"));
            w->read_only_seen = reported_on(PQparameterStatus(c, "default_transaction_read_only"));
            if (!PQsetInstanceData(c, &watch_events, w)) {
                delete w;
                w = nullptr;
            }
        }
    }
    if (PQnoticeReceiver previous = PQsetNoticeReceiver(c, &watch_for_fatal, w);
        previous && previous != &watch_for_fatal)
        default_notice_receiver.store(previous, std::memory_order_relaxed);
}

// The pool's epoch when the connection was opened: set once it is handed to
// the pool, so that the pool and the watch agree on it.
inline std::uint64_t stamp_birth(PGconn* c) noexcept {
    connection_watch* w = watch_of(c);
    if (!w || !w->binding) return 0;
    std::atomic<std::uint64_t>* e = w->binding->epoch.load(std::memory_order_acquire);
    w->born = e ? e->load(std::memory_order_relaxed) : 0;
    return w->born;
}

} // namespace pqpool::detail
