// Behind PgBouncer in transaction mode, PgBouncer pools the server connections: the
// application should not hold connections too. overflow::pass_through opens a client
// connection per acquire (cheap: PgBouncer is near and starts no backend) and closes it on
// release, and PgBouncer lends a server connection for one transaction at a time. Nothing
// may rely on session state across transactions: SET LOCAL inside the transaction,
// PQexecParams (the unnamed statement) instead of named prepared statements. run() re-runs
// the idempotent work on a fresh connection when PgBouncer or the server drops it.
// Usage: pgbouncer "<conninfo of PgBouncer>"
#include <pqpool/pqpool.hpp>

#include <atomic>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

void exec(PGconn* c, const char* sql) {
    PGresult* r = PQexec(c, sql);
    const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) throw std::runtime_error(std::string(sql) + ": " + PQerrorMessage(c));
}

// One transaction: a transaction-local setting, then a parameterised query that reads it.
std::string transaction(PGconn* c, int worker) {
    exec(c, "BEGIN");
    exec(c, "SET LOCAL application_name = 'pqpool-example'");
    const std::string param = std::to_string(worker);
    const char* values[] = {param.c_str()};
    PGresult* r = PQexecParams(c, "SELECT current_setting('application_name') || ' worker ' || $1::text", 1, nullptr,
                               values, nullptr, nullptr, 0);
    const bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    const std::string value = ok ? PQgetvalue(r, 0, 0) : PQerrorMessage(c);
    PQclear(r);
    if (!ok) throw std::runtime_error(value);
    exec(c, "COMMIT");
    return value;
}

} // namespace

int main(int argc, char** argv) {
    auto pool = pqpool::make_pool(argc > 1 ? argv[1] : "host=localhost port=6432 dbname=app",
                                  pqpool::overflow::pass_through{.max_open = 8, .wait = 5s});
    constexpr int workers = 8, per_worker = 10;
    std::atomic<int> done{0};
    std::vector<std::thread> threads;
    for (int w = 0; w < workers; ++w)
        threads.emplace_back([&, w] {
            for (int i = 0; i < per_worker; ++i) {
                try {
                    const std::string v = pool.run([w](PGconn* c) { return transaction(c, w); });
                    if (v == "pqpool-example worker " + std::to_string(w))
                        ++done;
                    else
                        std::printf("unexpected answer: %s\n", v.c_str());
                } catch (const std::exception& e) {
                    std::printf("a transaction failed: %s\n", e.what());
                }
            }
        });
    for (auto& t : threads) t.join();
    const pqpool::pool_stats s = pool.stats();
    std::printf("%d of %d transactions through PgBouncer from %d threads; connections the pool keeps open: %zu\n",
                done.load(), workers * per_worker, workers, s.size);
    return done == workers * per_worker && s.size == 0 ? 0 : 1;
}
