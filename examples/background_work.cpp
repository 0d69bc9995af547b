// Work that runs after an idle period (a background job, the first request after
// a quiet night) meets a connection the server or a proxy already closed:
// "SSL connection has been closed unexpectedly".
// ping_if_idle replaces such a connection before it is handed out, and run()
// re-runs idempotent work on a fresh connection when the connection is lost
// half-way (a server restart, a killed backend).
// Usage: background_work "<conninfo>"
#include <pqpool/pqpool.hpp>

#include <cstdio>
#include <stdexcept>
#include <string>

using namespace std::chrono_literals;

int main(int argc, char** argv) {
    using job_pool = pqpool::pool<pqpool::validation::ping_if_idle, pqpool::retry::exponential_backoff>;
    job_pool pool{argc > 1 ? argv[1] : "host=localhost sslmode=require",
                  pqpool::validation::ping_if_idle{.idle_for = 1s},
                  pqpool::retry::exponential_backoff{.attempts = 5, .base = 100ms, .cap = 2s}};

    // Idempotent: touching a timestamp twice is harmless.
    const std::string now = pool.run([](PGconn* c) {
        PGresult* r = PQexec(c, "SELECT now()::text");
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            PQclear(r);
            throw std::runtime_error(PQerrorMessage(c));
        }
        std::string v = PQgetvalue(r, 0, 0);
        PQclear(r);
        return v;
    });
    std::printf("server time: %s\n", now.c_str());
}
