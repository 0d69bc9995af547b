// The server, a proxy or a NAT box drops connections that sit idle, and the first request
// after a quiet spell fails with "server closed the connection unexpectedly" (over TLS:
// "SSL connection has been closed unexpectedly"). Here the server does it itself: every
// connection sets idle_session_timeout = 1 s. A pool without validation hands out the dead
// connection and the request fails; with validation::probe (a local check and one poll(),
// no round trip) the pool sees the closed socket, drops it and opens a fresh one, and every
// request succeeds.
// Usage: idle_disconnect "<conninfo>"
#include <pqpool/pqpool.hpp>

#include <cstdio>
#include <string>
#include <thread>

using namespace std::chrono_literals;

namespace {

// One request: true when SELECT 1 succeeded; otherwise prints libpq's message.
bool request(PGconn* c, const char* who) {
    PGresult* r = PQexec(c, "SELECT 1");
    const bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!ok) std::printf("%s: the request failed: %s", who, PQerrorMessage(c));
    PQclear(r);
    return ok;
}

pqpool::libpq_connector dropping_idle_connections(const std::string& conninfo) {
    return pqpool::libpq_connector{conninfo, {.setup = {"SET idle_session_timeout = '1s'"}}};
}

} // namespace

int main(int argc, char** argv) {
    const std::string conninfo = argc > 1 ? argv[1] : "host=localhost sslmode=require";

    // Without validation: the incident.
    auto unchecked = pqpool::make_pool(dropping_idle_connections(conninfo), pqpool::validation::none{},
                                       pqpool::overflow::fixed{.size = 1, .wait = 5s});
    if (!request(unchecked.acquire().get(), "no validation, before idling")) return 1;
    std::this_thread::sleep_for(2s); // the server closes the idle connection after 1 s
    if (request(unchecked.acquire().get(), "no validation, after idling")) {
        std::puts("the server did not drop the idle connection: this example shows nothing");
        return 1;
    }

    // With validation::probe: the same quiet spell, and every request succeeds.
    auto pool = pqpool::make_pool(dropping_idle_connections(conninfo), pqpool::validation::probe{},
                                  pqpool::overflow::fixed{.size = 4, .wait = 5s}, pqpool::observability::counters{});
    {
        auto a = pool.acquire(), b = pool.acquire(), c = pool.acquire(), d = pool.acquire(); // 4 open
        if (!request(a.get(), "probe") || !request(b.get(), "probe") || !request(c.get(), "probe") ||
            !request(d.get(), "probe"))
            return 1;
    }
    std::this_thread::sleep_for(2s); // all four are closed by the server now
    int failed = 0;
    for (int i = 0; i < 8; ++i) failed += !request(pool.acquire().get(), "validation::probe, after idling");
    const auto replaced = pool.observer().count(pqpool::event::validation_failed);
    std::printf("validation::probe: %d of 8 requests after idling succeeded; %llu connections the server had "
                "closed were replaced before use\n",
                8 - failed, static_cast<unsigned long long>(replaced));
    return failed == 0 && replaced == 4 ? 0 : 1;
}
