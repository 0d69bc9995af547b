#pragma once

// What the connector watches on each connection it opened, without a round
// trip of its own: a FATAL the server sent to an idle connection (seen by
// probe() as soon as it has arrived).

#include <libpq-fe.h>

#include <atomic>
#include <cstring>

namespace pqpool::detail {


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

inline void watch_notices(PGconn* c) noexcept {
    if (PQnoticeReceiver previous = PQsetNoticeReceiver(c, &watch_for_fatal, nullptr);
        previous && previous != &watch_for_fatal)
        default_notice_receiver.store(previous, std::memory_order_relaxed);
}

} // namespace pqpool::detail
