// pqpool behind a real PgBouncer 1.18 in transaction mode (started by the
// sandbox fixture with --pgbouncer): transactions and single statements from
// many threads through overflow::pass_through and a small bounded pool, with
// the pool's counts reconciled against PgBouncer's own client list; and the
// known hazard of protocol-level named prepared statements there, shown
// deterministically.

#include "catch.hpp"
#include "pg.hpp"
#include "sandbox.hpp"

#include <pqpool/pqpool.hpp>

#include <atomic>
#include <chrono>
#include <exception>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace pqpool;
using namespace std::chrono_literals;
using test::query;
using test::sandbox;
using test::unique_name;

namespace {

struct result_deleter {
    void operator()(PGresult* r) const noexcept { PQclear(r); }
};
using result = std::unique_ptr<PGresult, result_deleter>;

result exec(PGconn* c, const std::string& sql) { return result{PQexec(c, sql.c_str())}; }

// One parameter, one round trip (Parse/Bind/Execute/Sync with the unnamed
// statement): safe behind transaction pooling.
std::string value_with(PGconn* c, const char* sql, const std::string& param) {
    const char* values[] = {param.c_str()};
    result r{PQexecParams(c, sql, 1, nullptr, values, nullptr, nullptr, 0)};
    const auto status = PQresultStatus(r.get());
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK)
        throw std::runtime_error(std::string("query failed: ") + sql + ": " + PQresultErrorMessage(r.get()));
    return status == PGRES_TUPLES_OK && PQntuples(r.get()) > 0 ? PQgetvalue(r.get(), 0, 0) : "";
}

std::string sqlstate(const PGresult* r) {
    const char* s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    return s ? s : "";
}

struct connection {
    PGconn* c;
    explicit connection(const std::string& conninfo) : c(PQconnectdb(conninfo.c_str())) {
        if (PQstatus(c) != CONNECTION_OK) {
            const std::string why = PQerrorMessage(c);
            PQfinish(c);
            throw std::runtime_error("cannot connect: " + why);
        }
    }
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;
    ~connection() { PQfinish(c); }
};

// PgBouncer's admin console: how many of its clients carry this application_name.
int pgbouncer_clients_named(const std::string& app) {
    const auto& sb = sandbox::get();
    connection console{"host=127.0.0.1 port=" + sb.var("PQPOOL_TEST_PGBOUNCER_PORT") +
                       " dbname=pgbouncer user=pqpool sslmode=disable"};
    result r = exec(console.c, "SHOW CLIENTS");
    if (PQresultStatus(r.get()) != PGRES_TUPLES_OK)
        throw std::runtime_error(std::string("SHOW CLIENTS failed: ") + PQresultErrorMessage(r.get()));
    const int col = PQfnumber(r.get(), "application_name");
    if (col < 0) throw std::runtime_error("SHOW CLIENTS has no application_name column");
    int n = 0;
    for (int i = 0; i < PQntuples(r.get()); ++i) n += app == PQgetvalue(r.get(), i, col);
    return n;
}

// PgBouncer notices a client's Terminate a moment later: poll, bounded.
int settled_clients(const std::string& app, int expected) {
    int n = pgbouncer_clients_named(app);
    for (int i = 0; i < 250 && n != expected; ++i) {
        std::this_thread::sleep_for(20ms);
        n = pgbouncer_clients_named(app);
    }
    return n;
}

// A table of our own, made and dropped directly on the server.
struct scratch_table {
    std::string name = unique_name("pqpool_pgbouncer");
    connection server{sandbox::get().tls()};
    scratch_table() { query(server.c, "CREATE TABLE " + name + " (thread int, cycle int, backend int)"); }
    scratch_table(const scratch_table&) = delete;
    scratch_table& operator=(const scratch_table&) = delete;
    ~scratch_table() {
        try {
            query(server.c, "DROP TABLE IF EXISTS " + name);
        } catch (...) {}
    }
    int rows() { return std::stoi(query(server.c, "SELECT count(*) FROM " + name)); }
};

struct tally {
    std::atomic<int> ok{0}, failed{0};
    std::mutex m;
    std::string first_failure;
    std::set<std::string> backends; // server backends PgBouncer used for us
};

// `threads` x `cycles`: even cycles a transaction (BEGIN; INSERT; two reads of
// the backend pid, which must agree: PgBouncer keeps a transaction on one
// server connection; COMMIT), odd cycles one parameterised statement.
template <class Pool>
void run_load(Pool& p, const std::string& table, int threads, int cycles, tally& out) {
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t)
        workers.emplace_back([&, t] {
            for (int i = 0; i < cycles; ++i) {
                try {
                    auto conn = p.acquire();
                    PGconn* c = conn.get();
                    if (i % 2 == 0) {
                        query(c, "BEGIN");
                        const std::string pid = query(c, "SELECT pg_backend_pid()");
                        query(c, "INSERT INTO " + table + " VALUES (" + std::to_string(t) + ", " + std::to_string(i) +
                                     ", pg_backend_pid())");
                        if (query(c, "SELECT pg_backend_pid()") != pid)
                            throw std::runtime_error("a transaction moved between server connections");
                        query(c, "COMMIT");
                        std::lock_guard lock(out.m);
                        out.backends.insert(pid);
                    } else if (value_with(c, "SELECT $1::int + 1", std::to_string(i)) != std::to_string(i + 1)) {
                        throw std::runtime_error("wrong answer");
                    }
                    ++out.ok;
                } catch (const std::exception& e) {
                    ++out.failed;
                    std::lock_guard lock(out.m);
                    if (out.first_failure.empty()) out.first_failure = e.what();
                }
            }
        });
    for (auto& w : workers) w.join();
}

constexpr int threads = 8, cycles = 50;

} // namespace

TEST_CASE("through PgBouncer (transaction mode): overflow::pass_through, 8 threads x 50 cycles",
          "[integration][pgbouncer]") {
    const std::string app = unique_name("pqpool_pgb_pass");
    scratch_table table;
    tally out;
    using pass_pool = pool<overflow::pass_through>;
    {
        pass_pool p{sandbox::get().pgbouncer() + " application_name=" + app};
        run_load(p, table.name, threads, cycles, out);
        INFO("first failure: " << out.first_failure);
        CHECK(out.failed == 0);
        CHECK(out.ok == threads * cycles);
        CHECK(table.rows() == threads * cycles / 2);
        INFO(out.backends.size() << " server backends used");
        CHECK(p.stats() == pool_stats{}); // pass_through keeps nothing
        CHECK(settled_clients(app, 0) == 0);
    }
}

TEST_CASE("through PgBouncer (transaction mode): a small bounded pool with probe validation, 8 threads x 50 cycles",
          "[integration][pgbouncer]") {
    const std::string app = unique_name("pqpool_pgb_bounded");
    scratch_table table;
    tally out;
    using small_pool = pool<overflow::bounded, validation::probe>;
    {
        small_pool p{sandbox::get().pgbouncer() + " application_name=" + app,
                     overflow::bounded{.size = 2, .max_overflow = 2, .wait = 10s}};
        run_load(p, table.name, threads, cycles, out);
        INFO("first failure: " << out.first_failure);
        CHECK(out.failed == 0);
        CHECK(out.ok == threads * cycles);
        CHECK(table.rows() == threads * cycles / 2);
        const pool_stats st = p.stats();
        CHECK(st.in_use == 0);
        CHECK(st.waiting == 0);
        CHECK(st.size >= 1);
        CHECK(st.size <= 2);
        // The pool's connections are PgBouncer's clients: the counts agree.
        CHECK(settled_clients(app, static_cast<int>(st.size)) == static_cast<int>(st.size));
    }
    CHECK(settled_clients(app, 0) == 0);
}

// The hazard, made deterministic: PgBouncer < 1.21 passes Parse through to
// whichever server connection the client has at that moment and forgets it.
// The statement lives on that one server connection; the client's next
// transaction may run on another (where it does not exist), and another
// client may land on the one that has it (where its own PREPARE of the same
// name collides). Here another client holds the preparing server connection in
// an open transaction, so the executing transaction cannot get it.
TEST_CASE("through PgBouncer 1.18: a protocol-level named prepared statement does not survive the transaction",
          "[integration][pgbouncer]") {
    const auto& sb = sandbox::get();
    const std::string stmt = unique_name("pqpool_hazard");
    pool<overflow::fixed, validation::probe> p{sb.pgbouncer(), overflow::fixed{.size = 1}};
    auto lease = p.acquire();
    PGconn* c = lease.get();

    // Prepare inside a transaction, to learn which server backend has it.
    query(c, "BEGIN");
    {
        result r{PQprepare(c, stmt.c_str(), "SELECT $1::int * 2", 1, nullptr)};
        REQUIRE(PQresultStatus(r.get()) == PGRES_COMMAND_OK);
    }
    const std::string prepared_on = query(c, "SELECT pg_backend_pid()");
    query(c, "COMMIT"); // PgBouncer takes that server connection back

    // Other clients open transactions until one of them holds that backend
    // (PgBouncer reuses the last-released server connection first, so this is
    // normally the first one). Fewer than default_pool_size (20), so none waits.
    std::vector<std::unique_ptr<connection>> others;
    PGconn* holder = nullptr;
    for (int i = 0; i < 15 && !holder; ++i) {
        auto& o = others.emplace_back(std::make_unique<connection>(sb.pgbouncer()));
        query(o->c, "BEGIN");
        if (query(o->c, "SELECT pg_backend_pid()") == prepared_on) holder = o->c;
    }
    REQUIRE(holder != nullptr);

    // The preparing client's next transaction runs elsewhere: no such statement.
    {
        const char* values[] = {"21"};
        result r{PQexecPrepared(c, stmt.c_str(), 1, values, nullptr, nullptr, 0)};
        CHECK(PQresultStatus(r.get()) == PGRES_FATAL_ERROR);
        CHECK(sqlstate(r.get()) == "26000"); // invalid_sql_statement_name: prepared statement does not exist
    }
    // ...while a client that never prepared it has it, and collides with it.
    query(holder, "SAVEPOINT before_collision");
    {
        result r{PQprepare(holder, stmt.c_str(), "SELECT 1", 0, nullptr)};
        CHECK(PQresultStatus(r.get()) == PGRES_FATAL_ERROR);
        CHECK(sqlstate(r.get()) == "42P05"); // duplicate_prepared_statement
    }
    // Clean up the server connection PgBouncer hands to others next.
    query(holder, "ROLLBACK TO SAVEPOINT before_collision");
    query(holder, "DEALLOCATE " + stmt);
    for (auto& o : others) query(o->c, "COMMIT");

    // The safe forms work: one round trip with the unnamed statement, and a
    // named one prepared, used and deallocated inside a single transaction.
    CHECK(value_with(c, "SELECT $1::int * 2", "21") == "42");
    query(c, "BEGIN");
    {
        result r{PQprepare(c, stmt.c_str(), "SELECT $1::int * 2", 1, nullptr)};
        CHECK(PQresultStatus(r.get()) == PGRES_COMMAND_OK);
        const char* values[] = {"21"};
        result e{PQexecPrepared(c, stmt.c_str(), 1, values, nullptr, nullptr, 0)};
        REQUIRE(PQresultStatus(e.get()) == PGRES_TUPLES_OK);
        CHECK(std::string(PQgetvalue(e.get(), 0, 0)) == "42");
    }
    query(c, "DEALLOCATE " + stmt);
    query(c, "COMMIT");
}
