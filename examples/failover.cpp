// Failover and credentials: a primary and a standby behind one connection
// string. Writes go through a pool that only takes the primary
// (target_session_attrs=read-write); reads through one that prefers a standby.
// When a server goes away or changes role (a failover, a promotion, a restart)
// the pool that sees it retires every connection opened before, so a failover
// costs the operations in flight, not one per pooled connection, and run()
// re-runs those on the new primary. The password is fetched for each new
// connection (a rotating secret, or an RDS IAM token with rds_iam_auth).
// Usage: failover "host=db1,db2 port=5432,5432 dbname=app user=app sslmode=require"
#include <pqpool/pqpool.hpp>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <utility>

using namespace std::chrono_literals;

namespace {

// Where a real program asks its secrets store; here an environment variable
// (none: the connection string's password, or ~/.pgpass).
pqpool::connect_credentials current_password(const pqpool::connect_host&) {
    const char* pw = std::getenv("APP_DB_PASSWORD");
    return {.password = pw ? pw : ""};
}

std::string one_value(PGconn* c, const char* sql) {
    PGresult* r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK) {
        const std::string error = PQresultErrorMessage(r);
        PQclear(r);
        throw std::runtime_error(error);
    }
    std::string v = PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
    PQclear(r);
    return v;
}

} // namespace

int main(int argc, char** argv) {
    const std::string servers = argc > 1 ? argv[1] : "host=db1,db2 dbname=app user=app sslmode=require";
    // A retry budget that outlasts a promotion (a few seconds); each host gets 2 s to connect.
    const pqpool::retry::exponential_backoff outlast_a_failover{.attempts = 20, .base = 50ms, .cap = 1s};

    pqpool::pool<> writes{pqpool::libpq_connector{servers + " target_session_attrs=read-write connect_timeout=2",
                                                  {.credentials = current_password}},
                          outlast_a_failover};
    pqpool::pool<> reads{pqpool::libpq_connector{servers + " target_session_attrs=prefer-standby connect_timeout=2",
                                                 {.credentials = current_password}},
                         outlast_a_failover};

    // Idempotent work only: after a lost connection run() does it again.
    const std::string written_on = writes.run([](PGconn* c) {
        one_value(c, "CREATE TABLE IF NOT EXISTS failover_example (id int PRIMARY KEY, at timestamptz)");
        one_value(c, "INSERT INTO failover_example VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET at = now()");
        return one_value(c, "SELECT inet_server_port()");
    });
    std::printf("writes: the primary on port %s\n", written_on.c_str());

    const auto [read_on, standby] = reads.run([](PGconn* c) {
        return std::pair{one_value(c, "SELECT inet_server_port()"), one_value(c, "SELECT pg_is_in_recovery()") == "t"};
    });
    std::printf("reads: %s on port %s\n", standby ? "a standby" : "the primary (no standby answered)", read_on.c_str());
    std::printf("failovers seen so far: writes %llu, reads %llu\n",
                static_cast<unsigned long long>(writes.stats().epoch),
                static_cast<unsigned long long>(reads.stats().epoch));
}
