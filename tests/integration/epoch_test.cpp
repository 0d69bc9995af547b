// The invalidation epoch against a real PostgreSQL: what a libpq connection
// sees of its server going away or changing role moves the pool's epoch, once
// per event, and every connection opened before is retired instead of handed
// out; errors about other servers, and what the application asked of its own
// session, do not. (The failover between a real primary and standby is failover_test.cpp;
// the pool's bookkeeping of the epoch is tests/unit/recycling_test.cpp.)

#include "catch.hpp"
#include "pg.hpp"
#include "sandbox.hpp"

#include <pqpool/pqpool.hpp>

#include <libpq-fe.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
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

namespace {

// A pool like the default one (reset on return), whose four connections are
// warm; `sqls` run on one lease, which is then returned; then the four are
// taken again. Returns how many connections were retired for the epoch, and
// the epoch.
std::pair<std::uint64_t, std::uint64_t> epoch_after(const std::string& conninfo, const std::vector<const char*>& sqls) {
    using counted_pool = pool<observability::counters, overflow::fixed>;
    counted_pool p{conninfo, overflow::fixed{.size = 4, .wait = 10s}};
    {
        std::vector<counted_pool::lease> warm;
        for (int i = 0; i < 4; ++i) warm.push_back(p.acquire());
    }
    {
        auto l = p.acquire();
        for (const char* sql : sqls) (void)sqlstate_of(l.get(), sql);
        (void)sqlstate_of(l.get(), "ROLLBACK");
        (void)sqlstate_of(l.get(), "RESET ALL");
    }
    {
        std::vector<counted_pool::lease> again;
        for (int i = 0; i < 4; ++i) again.push_back(p.acquire());
    }
    CHECK(p.observer().count(event::connected) == 4); // not one connection replaced
    return {p.observer().closed(close_reason::epoch), p.stats().epoch};
}

// The server's default_transaction_read_only turned on by ALTER SYSTEM and a
// reload, as a failover tool fences a primary; turned off again at scope exit.
struct fence {
    admin a;
    fence() { set("on"); }
    ~fence() { set(nullptr); }
    fence(const fence&) = delete;
    fence& operator=(const fence&) = delete;
    void set(const char* value) {
        query(a.c, value ? std::string("ALTER SYSTEM SET default_transaction_read_only = ") + value
                         : std::string("ALTER SYSTEM RESET default_transaction_read_only"));
        query(a.c, "SELECT pg_reload_conf()");
        // Each backend reloads at its next command; wait until a fresh one sees it.
        const std::string want = value ? value : "off";
        for (int i = 0; i < 250; ++i) {
            PGconn* c = PQconnectdb(sandbox::get().tls().c_str());
            const bool seen = PQstatus(c) == CONNECTION_OK && query(c, "SHOW default_transaction_read_only") == want;
            PQfinish(c);
            if (seen) return;
            std::this_thread::sleep_for(20ms);
        }
        FAIL("the server did not take default_transaction_read_only = " << want);
    }
};

} // namespace

TEST_CASE("epoch: an error about another server (dblink's 08001) moves nothing", "[integration][epoch]") {
    {
        admin a;
        query(a.c, "CREATE EXTENSION IF NOT EXISTS dblink");
    }
    auto [retired, epoch] =
        epoch_after(sandbox::get().tls(), {"SELECT dblink_connect('pqpool_remote', 'host=127.0.0.1 port=1')"});
    CHECK(epoch == 0);
    CHECK(retired == 0);
}

TEST_CASE("epoch: what the application asked of its own session on a read-write pool moves nothing: a write in "
          "its READ ONLY transaction (25006), its SET default_transaction_read_only",
          "[integration][epoch]") {
    const std::string rw = sandbox::get().tls() + " target_session_attrs=read-write";
    SECTION("25006 in BEGIN READ ONLY") {
        auto [retired, epoch] = epoch_after(rw, {"BEGIN READ ONLY", "CREATE TEMP TABLE pqpool_epoch_rw (i int)"});
        CHECK(epoch == 0);
        CHECK(retired == 0);
    }
    SECTION("SET default_transaction_read_only = on") {
        auto [retired, epoch] = epoch_after(rw, {"SET default_transaction_read_only = on", "SELECT 1"});
        CHECK(epoch == 0);
        CHECK(retired == 0);
    }
}

TEST_CASE("epoch: a read-write pool whose server really turned read-only (fenced by a reload) moves the epoch, "
          "confirmed with the server when the connection comes back",
          "[integration][epoch]") {
    using counted_pool = pool<observability::counters, overflow::fixed>;
    counted_pool p{sandbox::get().tls() + " target_session_attrs=read-write", overflow::fixed{.size = 2, .wait = 10s}};
    { auto a = p.acquire(), b = p.acquire(); }
    {
        const fence f;
        {
            auto l = p.acquire();
            CHECK(sqlstate_of(l.get(), "CREATE TEMP TABLE pqpool_fenced (i int)") == "25006");
            CHECK(p.stats().epoch == 0); // a suspicion only, until the server is asked
        }
        CHECK(p.stats().epoch == 1);
        CHECK(p.stats().size == 1); // the connection that asked was closed; the other retires when found
    }
    auto l = p.acquire(); // fence lifted: a fresh session, read-write
    CHECK(query(l.get(), "SHOW default_transaction_read_only") == "off");
    CHECK(p.stats() == pool_stats{.size = 1, .in_use = 1, .epoch = 1});
    CHECK(p.observer().closed(close_reason::epoch) == 2);
}

TEST_CASE("epoch: a pool that does not reset on return does not hand out unchecked a connection that saw such a "
          "sign: it is replaced, the epoch stays",
          "[integration][epoch]") {
    probe_pool p{sandbox::get().tls() + " target_session_attrs=read-write", overflow::fixed{.size = 2, .wait = 10s}};
    int first = 0;
    {
        auto l = p.acquire();
        first = backend_of(l.get());
        REQUIRE(query(l.get(), "SET default_transaction_read_only = on").empty());
    }
    auto l = p.acquire(); // probe refuses the suspect connection: a fresh one
    CHECK(backend_of(l.get()) != first);
    CHECK(query(l.get(), "SHOW default_transaction_read_only") == "off");
    CHECK(p.stats() == pool_stats{.size = 1, .in_use = 1});
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
