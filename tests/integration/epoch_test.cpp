// The invalidation epoch against a real PostgreSQL: what a libpq connection
// sees of its server going away or changing role moves the pool's epoch, once
// per event, and every connection opened before is retired instead of handed
// out. (The failover between a real primary and standby is failover_test.cpp;
// the pool's bookkeeping of the epoch is tests/unit/recycling_test.cpp.)

#include "catch.hpp"
#include "pg.hpp"
#include "sandbox.hpp"

#include <pqpool/pqpool.hpp>

#include <libpq-fe.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <vector>

using namespace pqpool;
using namespace std::chrono_literals;
using test::admin;
using test::named;
using test::query;
using test::sandbox;
using test::unique_name;

namespace {

using probe_pool = pool<validation::probe, recycling::none, retry::none, overflow::fixed>;

// The error's SQLSTATE of `sql` ("" when it succeeds).
std::string sqlstate_of(PGconn* c, const char* sql) {
    PGresult* r = PQexec(c, sql);
    const char* code = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    std::string out = PQresultStatus(r) == PGRES_FATAL_ERROR && code ? code : "";
    PQclear(r);
    return out;
}

bool succeeds(PGconn* c, const char* sql) {
    PGresult* r = PQexec(c, sql);
    const bool ok = PQresultStatus(r) == PGRES_TUPLES_OK || PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    return ok;
}

int backend_of(PGconn* c) { return PQbackendPID(c); }

void terminate(admin& a, int pid) {
    // With a timeout, pg_terminate_backend waits until the backend has exited
    // (and sent its FATAL).
    REQUIRE(query(a.c, "SELECT pg_terminate_backend(" + std::to_string(pid) + ", 5000)") == "t");
}

} // namespace

TEST_CASE("epoch: a FATAL 57P01 sent to an idle connection moves the epoch, and the pool's other idle "
          "connections are retired, not handed out",
          "[integration][epoch]") {
    const std::string app = unique_name("epoch_fatal");
    probe_pool p{named(sandbox::get().tls(), app), overflow::fixed{.size = 3, .wait = 10s}};
    std::vector<int> old;
    {
        auto a = p.acquire(), b = p.acquire(), c = p.acquire();
        for (auto* l : {&c, &b, &a}) old.push_back(backend_of(l->get()));
    } // released c, b, a: `a` is on top of the idle stack
    REQUIRE(p.stats() == pool_stats{.size = 3, .idle = 3});
    admin adm;
    terminate(adm, old.back()); // a's backend: the next acquire probes it first

    auto l = p.acquire(); // probe sees the FATAL: the epoch moves; b and c are older, so retired unprobed
    CHECK(p.stats().epoch == 1);
    CHECK(std::find(old.begin(), old.end(), backend_of(l.get())) == old.end());
    CHECK(query(l.get(), "SELECT 1") == "1");
    CHECK(p.stats() == pool_stats{.size = 1, .in_use = 1, .epoch = 1});
    CHECK(adm.settled_count(app, 1) == 1); // b and c were closed, not left on the server
}

TEST_CASE("epoch: two connections that see the same event move the epoch once", "[integration][epoch]") {
    probe_pool p{sandbox::get().tls(), overflow::fixed{.size = 3, .wait = 10s}};
    auto a = p.acquire(), b = p.acquire();
    admin adm;
    terminate(adm, backend_of(a.get()));
    terminate(adm, backend_of(b.get()));
    CHECK_FALSE(succeeds(a.get(), "SELECT 1")); // its FATAL 57P01 moves it: a was opened in epoch 0
    CHECK(p.stats().epoch == 1);
    CHECK_FALSE(succeeds(b.get(), "SELECT 1")); // the same event, seen late: no second move
    CHECK(p.stats().epoch == 1);
    a.release();
    b.release();
    auto fresh = p.acquire(); // opened in epoch 1
    CHECK(query(fresh.get(), "SELECT 1") == "1");
    CHECK(p.stats().epoch == 1);
}

TEST_CASE("epoch: an idle session timeout (57P05) retires only its own connection", "[integration][epoch]") {
    const std::string app = unique_name("epoch_idle_timeout");
    probe_pool p{named(sandbox::get().tls(), app), overflow::fixed{.size = 2, .wait = 10s}};
    {
        auto a = p.acquire();
        auto b = p.acquire();
        // b's session ends itself when idle; a's does not.
        REQUIRE(query(b.get(), "SET idle_session_timeout = '100ms'").empty());
        a.release();
    } // b is on top of the idle stack
    std::this_thread::sleep_for(500ms);
    auto l = p.acquire(); // b is found closed with its FATAL 57P05; a is handed out
    CHECK(p.stats().epoch == 0);
    CHECK(query(l.get(), "SHOW idle_session_timeout") == "0");
    CHECK(p.stats() == pool_stats{.size = 1, .in_use = 1});
}

TEST_CASE("epoch: a statement failing with 25006 moves the epoch of a pool that asked for read-write servers, "
          "and only of such a pool",
          "[integration][epoch]") {
    const std::string rw = sandbox::get().tls() + " target_session_attrs=read-write";
    for (const auto& [conninfo, moves] : {std::pair{rw, true}, std::pair{sandbox::get().tls(), false}}) {
        CAPTURE(conninfo);
        probe_pool p{conninfo, overflow::fixed{.size = 2, .wait = 10s}};
        {
            auto other = p.acquire(); // opened before the error: retired on its return when the epoch moved
            auto l = p.acquire();
            REQUIRE(sqlstate_of(l.get(), "BEGIN READ ONLY").empty());
            CHECK(sqlstate_of(l.get(), "CREATE TEMP TABLE pqpool_epoch_rw (i int)") == "25006");
            REQUIRE(sqlstate_of(l.get(), "ROLLBACK").empty());
        }
        CHECK(p.stats().epoch == (moves ? 1u : 0u));
        CHECK(p.stats().size == (moves ? 0u : 2u));
    }
}

TEST_CASE("epoch: a read-write pool whose server reports it became read-only moves the epoch",
          "[integration][epoch]") {
    probe_pool p{sandbox::get().tls() + " target_session_attrs=read-write", overflow::fixed{.size = 2, .wait = 10s}};
    {
        auto l = p.acquire();
        CHECK(query(l.get(), "SELECT 1") == "1");
        CHECK(p.stats().epoch == 0);
        // The server reports default_transaction_read_only (a fenced primary
        // does the same by a reload); libpq's read-write check would refuse it now.
        REQUIRE(query(l.get(), "SET default_transaction_read_only = on").empty());
        CHECK(query(l.get(), "SELECT 1") == "1");
        CHECK(p.stats().epoch == 1);
    }
    CHECK(p.stats().size == 0); // retired on its return
    auto l = p.acquire();       // a fresh session is read-write again
    CHECK(query(l.get(), "SHOW default_transaction_read_only") == "off");
    CHECK(p.stats().epoch == 1);
}

TEST_CASE("epoch: run() whose query is cut off by a terminated backend moves the epoch once and finishes on a "
          "fresh connection",
          "[integration][epoch][run]") {
    const std::string app = unique_name("epoch_run");
    pool<validation::none, recycling::none, overflow::fixed> p{
        named(sandbox::get().tls(), app), overflow::fixed{.size = 3, .wait = 10s},
        retry::exponential_backoff{.attempts = 3, .base = 10ms, .cap = 50ms}};
    std::vector<int> old;
    {
        auto a = p.acquire(), b = p.acquire();
        old = {backend_of(a.get()), backend_of(b.get())};
    }
    admin adm;
    int calls = 0;
    std::vector<int> used;
    const std::string v = p.run([&](PGconn* c) {
        used.push_back(backend_of(c));
        if (++calls == 1) {
            std::thread killer([&, pid = backend_of(c)] {
                std::this_thread::sleep_for(200ms);
                admin k;
                terminate(k, pid);
            });
            PGresult* r = PQexec(c, "SELECT pg_sleep(5)"); // ends with the FATAL 57P01
            PQclear(r);
            killer.join();
            return std::string("lost");
        }
        return query(c, "SELECT 'done'");
    });
    CHECK(v == "done");
    CHECK(calls == 2);
    CHECK(p.stats().epoch == 1); // the FATAL and the loss are one event
    REQUIRE(used.size() == 2);
    CHECK(std::find(old.begin(), old.end(), used[1]) == old.end()); // not the other, older idle connection
    CHECK(adm.settled_count(app, 1) == 1);
}

TEST_CASE("epoch: a connection opened through a copy of the pool's connector may outlive the pool, and what it "
          "sees afterwards moves nothing",
          "[integration][epoch]") {
    std::optional<probe_pool> p{std::in_place, sandbox::get().tls(), overflow::fixed{.size = 1, .wait = 10s}};
    const libpq_connector c = p->connector(); // shares the pool's binding
    PGconn* h = c.connect(libpq_connector::clock::now() + 10s);
    REQUIRE(h);
    CHECK(c.birth_epoch(h) == 0);
    p.reset(); // the pool and its epoch are gone
    admin adm;
    terminate(adm, backend_of(h));
    std::this_thread::sleep_for(100ms);
    CHECK_FALSE(c.probe(h)); // sees the FATAL; reports to nobody (ASan: no use of the freed epoch)
    c.close(h);
}
