// A real failover: a primary and a streaming standby of their own (CTest's
// "failover sandbox" fixture: scripts/pg-sandbox start, then standby; the
// folder is PQPOOL_FAILOVER_DIR). While 8 threads write through run() on a
// pool of `host=primary,standby target_session_attrs=read-write`, the test
// stops the primary (fast shutdown), promotes the standby, then restarts the
// old primary as a standby of the new one; a prefer-standby pool reads
// meanwhile. It asserts:
// - every write succeeds, each within N = 5 s of the moment a primary could
//   take it again (its start, or the promotion): the connect timeout per host
//   (2 s) plus the backoff cap (0.5 s), and the time to reopen the pool's 8
//   connections two at a time on a loaded machine under sanitizers;
// - no write ever meets a read-only server (25006);
// - no connection to the stopped primary is handed out after the epoch moved (the pool
//   keeps twice as many connections as threads, all idle at times):
//   each writing thread loses at most the one operation it had in flight;
// - the writes counted by the threads are the rows on the new primary, and
//   the pool's connections are the new primary's backends of its name (none
//   on the demoted server);
// - the read pool reads from the standby while there is one, follows the
//   promotion, and moves to the old primary once it is a standby.
// The roles are whatever they are when the test starts (a rerun finds them
// swapped), so the test asks each server.

#include "catch.hpp"
#include "pg.hpp"

#include <pqpool/pqpool.hpp>

#include <libpq-fe.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace pqpool;
using namespace std::chrono_literals;
using test::query;

namespace {

using steady = std::chrono::steady_clock;

// One server of the pair, from its pg-sandbox state file.
struct server {
    std::string state;
    std::map<std::string, std::string> vars;

    static server load(const std::string& state) {
        server s{state, {}};
        std::ifstream in(state);
        if (!in) throw std::runtime_error("failover test: cannot read " + state + " (did the failover sandbox start?)");
        for (std::string line; std::getline(in, line);)
            if (auto eq = line.find('='); eq != std::string::npos) s.vars[line.substr(0, eq)] = line.substr(eq + 1);
        return s;
    }
    const std::string& var(const std::string& k) const {
        auto it = vars.find(k);
        if (it == vars.end()) throw std::runtime_error("failover test: " + k + " missing in " + state);
        return it->second;
    }
    std::string port() const { return var("PQPOOL_TEST_PORT"); }
    std::string conninfo() const { return var("PQPOOL_TEST_CONNINFO"); }
    // The script, with this server's state file.
    void sandbox(const std::string& args) const {
        const std::string cmd = "'" + var("PQPOOL_SANDBOX_SCRIPT") + "' " + args;
        if (std::system(cmd.c_str()) != 0) throw std::runtime_error("failover test: failed: " + cmd);
    }
    bool in_recovery() const {
        PGconn* c = PQconnectdb((conninfo() + " connect_timeout=5").c_str());
        const bool ok = PQstatus(c) == CONNECTION_OK;
        std::string v = ok ? query(c, "SELECT pg_is_in_recovery()") : "";
        PQfinish(c);
        if (!ok) throw std::runtime_error("failover test: cannot reach the server on port " + port());
        return v == "t";
    }
    int backends_named(const std::string& app) const {
        PGconn* c = PQconnectdb((conninfo() + " connect_timeout=5").c_str());
        int n = -1;
        if (PQstatus(c) == CONNECTION_OK)
            n = std::stoi(query(c, "SELECT count(*) FROM pg_stat_activity WHERE application_name = '" + app + "'"));
        PQfinish(c);
        return n;
    }
};

std::pair<server, server> pair_from_fixture() {
    const char* dir = std::getenv("PQPOOL_FAILOVER_DIR");
    if (!dir || !*dir)
        throw std::runtime_error("failover test: PQPOOL_FAILOVER_DIR is not set; run it through ctest, which starts "
                                 "a primary and a standby (the \"failover sandbox\" fixture)");
    return {server::load(std::string(dir) + "/primary"), server::load(std::string(dir) + "/standby")};
}

// Both hosts, in the fixture's order (so after a rerun the first may be the standby).
std::string both(const server& a, const server& b, const std::string& attrs, const std::string& app) {
    return "host=127.0.0.1,127.0.0.1 port=" + a.port() + "," + b.port() + " dbname=" + a.var("PQPOOL_TEST_DBNAME") +
           " user=" + a.var("PQPOOL_TEST_USER") + " sslmode=require connect_timeout=2 target_session_attrs=" + attrs +
           " application_name=" + app;
}

struct write_record {
    steady::time_point start, end;
    bool ok = false;
    std::string error;
};

struct read_record {
    steady::time_point at;
    std::string port;
    bool standby = false;
};

} // namespace

TEST_CASE("failover: writes through run() survive the promotion of the standby, and reads follow the standby",
          "[integration][failover]") {
    auto [a, b] = pair_from_fixture();
    const bool a_primary = !a.in_recovery();
    REQUIRE(a_primary != !b.in_recovery()); // one primary, one standby
    const server& primary = a_primary ? a : b;
    const server& standby = a_primary ? b : a;
    INFO("primary on " << primary.port() << ", standby on " << standby.port());

    {
        PGconn* c = PQconnectdb(primary.conninfo().c_str());
        REQUIRE(PQstatus(c) == CONNECTION_OK);
        query(c, "DROP TABLE IF EXISTS failover_writes");
        query(c, "CREATE TABLE failover_writes (thread int, seq int, port int, PRIMARY KEY (thread, seq))");
        PQfinish(c);
    }

    constexpr int threads = 8;
    constexpr auto N = 5s;
    // No validation: only the epoch keeps the stopped primary's idle connections from being handed
    // out. Twice as many connections as threads, all opened first: idle ones to spare, so that a
    // thread whose retry were handed a stale connection would lose a second operation.
    using write_pool = pool<validation::none, recycling::none, overflow::fixed, observability::counters>;
    write_pool writes{both(a, b, "read-write", "failover_w"), overflow::fixed{.size = 2 * threads, .wait = 30s},
                      retry::exponential_backoff{.attempts = 20, .base = 50ms, .cap = 500ms}};
    {
        std::vector<write_pool::lease> warm;
        for (int i = 0; i < 2 * threads; ++i) warm.push_back(writes.acquire());
    }
    REQUIRE(writes.stats().idle == 2 * threads);
    // Reads prefer a standby. Its connections live 3.5-4 s: the one opened
    // first outlives the promotion (which it must notice), and the one opened
    // on the new primary then makes way for the new standby soon enough.
    using read_pool = pool<validation::none, recycling::limits, overflow::fixed>;
    read_pool reads{both(a, b, "prefer-standby", "failover_r"), overflow::fixed{.size = 1, .wait = 30s},
                    recycling::limits{.max_lifetime = 4s, .jitter = 500ms},
                    retry::exponential_backoff{.attempts = 20, .base = 50ms, .cap = 500ms}};

    std::atomic<bool> stop{false};
    std::vector<std::vector<write_record>> written(threads);
    std::vector<int> lost(threads, 0), read_only(threads, 0);
    std::vector<std::thread> writers;
    for (int t = 0; t < threads; ++t)
        writers.emplace_back([&, t] {
            for (int seq = 0; !stop.load(); ++seq) {
                write_record r;
                r.start = steady::now();
                try {
                    writes.run([&](PGconn* c) {
                        const std::string sql = "INSERT INTO failover_writes VALUES (" + std::to_string(t) + ", " +
                                                std::to_string(seq) + ", inet_server_port()) ON CONFLICT DO NOTHING";
                        PGresult* res = PQexec(c, sql.c_str());
                        const bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
                        const char* code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
                        const std::string message = PQresultErrorMessage(res);
                        PQclear(res);
                        if (ok) return;
                        if (code && std::string(code) == "25006") ++read_only[static_cast<std::size_t>(t)];
                        if (PQstatus(c) == CONNECTION_BAD) ++lost[static_cast<std::size_t>(t)];
                        throw std::runtime_error(message);
                    });
                    r.ok = true;
                } catch (const std::exception& e) {
                    r.error = e.what();
                }
                r.end = steady::now();
                written[static_cast<std::size_t>(t)].push_back(r);
                std::this_thread::sleep_for(5ms);
            }
        });
    std::mutex reads_m;
    std::vector<read_record> read_log;
    std::vector<std::string> read_errors;
    std::thread reader([&] {
        while (!stop.load()) {
            try {
                const auto [port, standby] = reads.run([](PGconn* c) {
                    return std::pair{query(c, "SELECT inet_server_port()"),
                                     query(c, "SELECT pg_is_in_recovery()") == "t"};
                });
                const std::lock_guard lock(reads_m);
                read_log.push_back({steady::now(), port, standby});
            } catch (const std::exception& e) {
                const std::lock_guard lock(reads_m);
                read_errors.emplace_back(e.what());
            }
            std::this_thread::sleep_for(50ms);
        }
    });

    for (int i = 0; i < 200; ++i) { // the read pool has its first connection
        {
            const std::lock_guard lock(reads_m);
            if (!read_log.empty()) break;
        }
        std::this_thread::sleep_for(10ms);
    }
    std::this_thread::sleep_for(1500ms);
    const auto stopped_at = steady::now();
    primary.sandbox("ctl --state '" + primary.state + "' stop");
    standby.sandbox("ctl --state '" + standby.state + "' promote");
    const auto promoted_at = steady::now();
    std::this_thread::sleep_for(1s);
    primary.sandbox("follow --state '" + primary.state + "' --primary-state '" + standby.state + "'");
    const auto rejoined_at = steady::now();
    std::this_thread::sleep_for(4500ms); // the read pool's connection on the new primary lives 3.5-4 s
    stop = true;
    for (auto& w : writers) w.join();
    reader.join();
    INFO("stop took " << std::chrono::duration_cast<std::chrono::milliseconds>(promoted_at - stopped_at).count()
                      << " ms up to the promotion");

    // Every write succeeded, within N of the moment a primary could take it.
    std::size_t total = 0;
    std::chrono::milliseconds slowest{0};
    for (int t = 0; t < threads; ++t) {
        for (const write_record& r : written[static_cast<std::size_t>(t)]) {
            ++total;
            INFO("thread " << t << ": " << r.error);
            CHECK(r.ok);
            const auto from = std::max(r.start, promoted_at);
            slowest = std::max(slowest, std::chrono::duration_cast<std::chrono::milliseconds>(r.end - from));
        }
        CHECK(read_only[static_cast<std::size_t>(t)] == 0); // no write met a read-only server
        CHECK(lost[static_cast<std::size_t>(t)] <= 1);      // only the operation in flight at the stop
    }
    INFO(total << " writes; the slowest took " << slowest.count() << " ms after the promotion (or its start)");
    CHECK(slowest <= N);
    CHECK(std::accumulate(lost.begin(), lost.end(), 0) >= 1); // the stop did cut writes in flight
    CHECK(writes.stats().epoch >= 1);

    // The rows on the new primary are the writes the threads saw succeed; the
    // pool's connections are its backends, and none is left on the demoted server.
    {
        PGconn* c = PQconnectdb(standby.conninfo().c_str());
        REQUIRE(PQstatus(c) == CONNECTION_OK);
        CHECK(std::stoul(query(c, "SELECT count(*) FROM failover_writes")) == total);
        CHECK(query(c, "SELECT count(*) FROM failover_writes WHERE port NOT IN (" + primary.port() + ", " +
                           standby.port() + ")") == "0");
        PQfinish(c);
    }
    writes.maintain(); // retires what the epoch left idle (a stopped primary's connections never handed out again)
    const pool_stats ws = writes.stats();
    CHECK(ws.in_use == 0);
    CHECK(standby.backends_named("failover_w") == static_cast<int>(ws.size));
    CHECK(primary.backends_named("failover_w") == 0);

    // Reads: on the standby before the failover, and on the old primary once it is one.
    const std::lock_guard lock(reads_m);
    CHECK(read_errors.empty());
    for (const std::string& e : read_errors) INFO(e);
    std::size_t before = 0, after = 0;
    for (const read_record& r : read_log) {
        if (r.at < stopped_at) {
            ++before;
            CHECK(r.port == standby.port());
            CHECK(r.standby);
        } else if (r.at > rejoined_at + 4s) {
            ++after;
            CHECK(r.port == primary.port());
            CHECK(r.standby);
        }
    }
    CHECK(before > 0);
    CHECK(after > 0);
    CHECK(reads.stats().epoch >= 1); // its standby's promotion was seen
    reads.maintain();
    CHECK(primary.backends_named("failover_r") == static_cast<int>(reads.stats().size));
}

TEST_CASE("failover: target_session_attrs on a real primary and standby picks the server libpq 15 documents, in "
          "either order, and a refusal names each host and why",
          "[integration][failover]") {
    auto [a, b] = pair_from_fixture();
    const bool a_primary = !a.in_recovery();
    const server& primary = a_primary ? a : b;
    const server& standby = a_primary ? b : a;
    struct expectation {
        const char* attrs;
        bool wants_standby; // else the primary; "any" takes the first host
    };
    for (const auto& [first, second] : {std::pair{&primary, &standby}, std::pair{&standby, &primary}}) {
        for (const expectation& e : {expectation{"read-write", false}, expectation{"primary", false},
                                     expectation{"read-only", true}, expectation{"standby", true},
                                     expectation{"prefer-standby", true}, expectation{"any", first == &standby}}) {
            CAPTURE(e.attrs, first->port());
            const libpq_connector c{both(*first, *second, e.attrs, "failover_attrs")};
            PGconn* h = c.connect(libpq_connector::clock::now() + 30s);
            REQUIRE(h);
            CHECK(query(h, "SELECT inet_server_port()") == (e.wants_standby ? standby.port() : primary.port()));
            c.close(h);
        }
    }
    // Only the standby listed, twice: a read-write pool is refused by each, and told why.
    const libpq_connector c{both(standby, standby, "read-write", "failover_attrs")};
    try {
        c.connect(libpq_connector::clock::now() + 30s);
        FAIL("a standby was taken for read-write");
    } catch (const connect_error& e) {
        const std::string msg = e.what();
        CAPTURE(msg);
        const std::string refusal = "host 127.0.0.1:" + standby.port() + ": session is read-only";
        const std::size_t at = msg.find(refusal);
        REQUIRE(at != std::string::npos);
        CHECK(msg.find(refusal, at + 1) != std::string::npos);
        CHECK(e.transient()); // a promotion may come
    }
}
