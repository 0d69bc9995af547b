#pragma once

// libpq with a client-side timeout, for tests of broken networks: a query that
// may hang is sent with PQsendQuery and waited for with poll(), never longer
// than asked. Plain libpq: no pqpool header.

#include "sockets.hpp"

#include <libpq-fe.h>
#include <poll.h>

#include <chrono>
#include <memory>
#include <ostream>
#include <stdexcept>
#include <string>

namespace pqpool::test {

struct pq_closer {
    void operator()(PGconn* c) const noexcept { PQfinish(c); }
};
using pq_ptr = std::unique_ptr<PGconn, pq_closer>;

// PQconnectdb; throws with libpq's message when the connection is not OK.
inline pq_ptr connect_or_throw(const std::string& conninfo) {
    pq_ptr c{PQconnectdb(conninfo.c_str())};
    if (!c || PQstatus(c.get()) != CONNECTION_OK)
        throw std::runtime_error("connect failed: " + std::string(c ? PQerrorMessage(c.get()) : "out of memory"));
    return c;
}

struct pq_outcome {
    enum class kind { result, error, timeout };
    kind what;
    std::string text; // result: the first value of the last row set ("" when none); error: the message
    std::chrono::milliseconds elapsed;
};

inline std::ostream& operator<<(std::ostream& os, pq_outcome::kind k) {
    return os << (k == pq_outcome::kind::result ? "result" : k == pq_outcome::kind::error ? "error" : "timeout");
}

// Waits up to `timeout` for the results of what was sent on `c`: kind::result
// with the first value of the last row set, kind::error with the server's or
// libpq's message (the connection may be BAD then), or kind::timeout with the
// command still in flight.
inline pq_outcome wait_result(PGconn* c, std::chrono::milliseconds timeout) {
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    const auto deadline = t0 + timeout;
    auto outcome = [&](pq_outcome::kind k, std::string text) {
        return pq_outcome{k, std::move(text), std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - t0)};
    };
    auto left = [&] { return std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now()); };
    for (int f = PQflush(c); f != 0; f = PQflush(c)) {
        if (f < 0) return outcome(pq_outcome::kind::error, PQerrorMessage(c));
        if (left().count() <= 0 || net::wait_for(PQsocket(c), POLLOUT, left()) == 0)
            return outcome(pq_outcome::kind::timeout, "");
    }
    std::string value, error;
    for (;;) {
        while (PQisBusy(c)) {
            if (left().count() <= 0 || net::wait_for(PQsocket(c), POLLIN, left()) == 0)
                return outcome(pq_outcome::kind::timeout, "");
            if (!PQconsumeInput(c)) return outcome(pq_outcome::kind::error, PQerrorMessage(c));
        }
        PGresult* r = PQgetResult(c);
        if (!r) break;
        const auto status = PQresultStatus(r);
        if (status == PGRES_TUPLES_OK)
            value = PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
        else if (status != PGRES_COMMAND_OK)
            error = PQresultErrorMessage(r);
        PQclear(r);
    }
    if (error.empty() && PQstatus(c) == CONNECTION_BAD) error = PQerrorMessage(c);
    return error.empty() ? outcome(pq_outcome::kind::result, value) : outcome(pq_outcome::kind::error, error);
}

// PQsendQuery(sql), then wait_result(timeout).
inline pq_outcome query_within(PGconn* c, const std::string& sql, std::chrono::milliseconds timeout) {
    if (!PQsendQuery(c, sql.c_str())) return {pq_outcome::kind::error, PQerrorMessage(c), {}};
    return wait_result(c, timeout);
}

} // namespace pqpool::test
