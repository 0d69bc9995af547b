// The pool against a real PostgreSQL (the sandbox: TLS on, self-signed
// certificate): queries over every transport, errors within the connect
// timeout, setup statements, counts that agree with the server's own view,
// leases that outlive the pool, and fork() with TLS connections.

#include "catch.hpp"
#include "pg.hpp"
#include "sandbox.hpp"
#include "sockets.hpp"

#include <pqpool/pqpool.hpp>

#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

using namespace pqpool;
using namespace std::chrono_literals;
using test::admin;
using test::named;
using test::query;
using test::sandbox;
using test::unique_name;
using test::net::closed_port;

TEST_CASE("acquire, query, release over TLS, verify-full, plain TCP and the Unix socket", "[integration][pool]") {
    const auto& sb = sandbox::get();
    struct transport {
        std::string conninfo;
        int ssl;
    };
    for (const transport& t : {transport{sb.tls(), 1}, transport{sb.verify_full(), 1}, transport{sb.plain(), 0},
                               transport{sb.socket(), 0}}) {
        INFO(t.conninfo);
        pool<> p{t.conninfo};
        for (int i = 0; i < 3; ++i) {
            auto conn = p.acquire();
            CHECK(query(conn.get(), "SELECT 40 + 2") == "42");
            CHECK(PQsslInUse(conn.get()) == t.ssl);
        }
        CHECK(p.stats().size == 1); // one connection, reused
    }
}

TEST_CASE("the default pool's reset on return rolls back what a lease left open", "[integration][pool]") {
    pool<overflow::fixed> p{sandbox::get().tls(), overflow::fixed{.size = 1}};
    {
        auto c = p.acquire();
        query(c.get(), "CREATE TEMP TABLE IF NOT EXISTS t (x int)");
        query(c.get(), "BEGIN");
        query(c.get(), "INSERT INTO t VALUES (1)");
    }
    auto c = p.acquire();
    CHECK(PQtransactionStatus(c.get()) == PQTRANS_IDLE);
    CHECK(query(c.get(), "SELECT count(*) FROM t") == "0");
}

TEST_CASE("a wrong password fails at once with 28P01 and never shows a password", "[integration][pool]") {
    const auto& sb = sandbox::get();
    const std::string right = sb.password();
    const std::string wrong = "Wr0ngPassw0rdXyz";
    const std::string uri = "postgresql://" + sb.var("PQPOOL_TEST_PASSWORD_USER") + ":" + wrong + "@" +
                            sb.var("PQPOOL_TEST_HOST") + ":" + sb.var("PQPOOL_TEST_PORT") + "/" +
                            sb.var("PQPOOL_TEST_DBNAME") + "?sslmode=require";
    for (const std::string& conninfo : {sb.password_role(wrong), uri}) {
        INFO("conninfo form " << (conninfo == uri ? "URI" : "key=value"));
        pool<observability::counters> p{conninfo};
        const auto start = std::chrono::steady_clock::now();
        try {
            (void)p.acquire();
            FAIL("a wrong password connected");
        } catch (const connect_error& e) {
            CHECK(e.sqlstate() == "28P01");
            CHECK_FALSE(e.transient());
            const std::string what = e.what();
            CHECK(what.find(wrong) == std::string::npos);
            CHECK(what.find(right) == std::string::npos);
            CHECK_THAT(what, Catch::Contains("password authentication failed"));
        }
        CHECK(std::chrono::steady_clock::now() - start < 5s);
        CHECK(p.observer().count(event::connect_failed) == 1); // not retried
        CHECK(p.stats().size == 0);
    }
    pool<> ok{sb.password_role(right)};
    CHECK(query(ok.acquire().get(), "SELECT current_user") == sb.var("PQPOOL_TEST_PASSWORD_USER"));
}

TEST_CASE("a closed port fails with a transient connect_error within the retry budget", "[integration][pool]") {
    const std::string conninfo = "host=127.0.0.1 port=" + std::to_string(closed_port()) + " dbname=x user=x";
    pool<retry::none> once{conninfo};
    CHECK_THROWS_MATCHES(once.acquire(), connect_error,
                         Catch::Predicate<connect_error>([](const connect_error& e) { return e.transient(); }));

    pool<observability::counters> retried{conninfo,
                                          retry::exponential_backoff{.attempts = 3, .base = 20ms, .cap = 50ms}};
    const auto start = std::chrono::steady_clock::now();
    CHECK_THROWS_AS(retried.acquire(), connect_error);
    CHECK(std::chrono::steady_clock::now() - start < 5s);
    CHECK(retried.observer().count(event::connect_failed) == 3);
    CHECK(retried.stats().size == 0);
}

TEST_CASE("setup statements run on every new connection", "[integration][pool]") {
    const std::string app = unique_name("pqpool-setup");
    pool<overflow::fixed> p{
        libpq_connector{sandbox::get().tls(),
                        {.setup = {"SET search_path TO pg_catalog, public", "SET statement_timeout = '30s'",
                                   "SET application_name = '" + app + "'"}}},
        overflow::fixed{.size = 2}};
    auto a = p.acquire(), b = p.acquire();
    for (PGconn* c : {a.get(), b.get()}) {
        CHECK(query(c, "SHOW search_path") == "pg_catalog, public");
        CHECK(query(c, "SHOW statement_timeout") == "30s");
        CHECK(query(c, "SHOW application_name") == app);
    }
}

TEST_CASE("the pool's counts agree with pg_stat_activity", "[integration][pool]") {
    const std::string app = unique_name("pqpool-count");
    admin server;
    {
        pool<overflow::bounded> p{named(sandbox::get().tls(), app),
                                  overflow::bounded{.size = 2, .max_overflow = 2, .wait = 5s}};
        std::vector<pool<overflow::bounded>::lease> held;
        for (int i = 0; i < 4; ++i) held.push_back(p.acquire());
        CHECK(p.stats().size == 4);
        CHECK(server.backends_named(app) == 4);
        held.clear(); // the two overflow connections close on return
        CHECK(p.stats().size == 2);
        for (int i = 0; i < 50 && server.backends_named(app) != 2; ++i) std::this_thread::sleep_for(20ms);
        CHECK(server.backends_named(app) == 2);
    }
    for (int i = 0; i < 50 && server.backends_named(app) != 0; ++i) std::this_thread::sleep_for(20ms);
    CHECK(server.backends_named(app) == 0); // destroying the pool closed everything
}

TEST_CASE("a lease outlives its pool: still usable, closed on return", "[integration][pool]") {
    const std::string app = unique_name("pqpool-outlive");
    admin server;
    std::optional<pool<>> p;
    p.emplace(named(sandbox::get().tls(), app));
    auto lease = p->acquire();
    p.reset();
    CHECK(query(lease.get(), "SELECT 1") == "1");
    CHECK(server.backends_named(app) == 1);
    lease.release();
    for (int i = 0; i < 50 && server.backends_named(app) != 0; ++i) std::this_thread::sleep_for(20ms);
    CHECK(server.backends_named(app) == 0);
}

namespace {
// The parent holds `n` idle connections and forks `children` children in turn;
// each child acquires from the same pool object, queries, then destroys the
// pool and exits normally. Returns how many of the parent's queries failed
// afterwards; a child's own failure fails the test directly.
template <class Pool>
int parent_failures_after_forks(Pool* p, int n, int children) {
    {
        std::vector<typename Pool::lease> warm;
        for (int i = 0; i < n; ++i) warm.push_back(p->acquire());
    }
    int failures = 0;
    for (int k = 0; k < children; ++k) {
        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            int code = 0;
            try {
                auto c = p->acquire();
                code = query(c.get(), "SELECT 7") == "7" ? 0 : 2;
            } catch (...) {
                code = 3;
            }
            delete p; // the child's destructors run, as at any normal exit
            std::exit(code);
        }
        int status = 0;
        REQUIRE(::waitpid(pid, &status, 0) == pid);
        REQUIRE(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 0);
        std::vector<typename Pool::lease> all;
        for (int i = 0; i < n; ++i) all.push_back(p->acquire());
        for (auto& c : all) {
            try {
                query(c.get(), "SELECT 1");
            } catch (const std::exception&) {
                ++failures;
                c.mark_broken();
            }
        }
    }
    return failures;
}
} // namespace

TEST_CASE("fork_safety::detect: children using the pool never break the parent's connections",
          "[integration][pool][fork]") {
    for (const std::string& conninfo : {sandbox::get().tls(), sandbox::get().plain()}) {
        INFO(conninfo);
        using safe = pool<validation::none, recycling::none, overflow::fixed>;
        auto* p = new safe{conninfo, overflow::fixed{.size = 4}};
        CHECK(parent_failures_after_forks(p, 4, 20) == 0);
        delete p;
    }
}

TEST_CASE("fork_safety::none: the same scenario breaks the parent (the test can tell)", "[integration][pool][fork]") {
    for (const std::string& conninfo : {sandbox::get().tls(), sandbox::get().plain()}) {
        INFO(conninfo);
        using unsafe = pool<validation::none, recycling::none, overflow::fixed, fork_safety::none>;
        auto* p = new unsafe{conninfo, overflow::fixed{.size = 4}};
        CHECK(parent_failures_after_forks(p, 4, 3) > 0);
        delete p;
    }
}

TEST_CASE("a child that drops a lease taken before the fork leaves the parent's connection healthy",
          "[integration][pool][fork]") {
    using safe = pool<validation::none, recycling::none, overflow::fixed>;
    auto* p = new safe{sandbox::get().tls(), overflow::fixed{.size = 2}};
    auto held = p->acquire();
    CHECK(query(held.get(), "SELECT 1") == "1");
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int code = 0;
        try {
            (void)held.get();
            code = 4; // using it in the child must throw
        } catch (const closed_error&) {}
        held.release(); // dropped in the child: abandoned, no I/O
        delete p;
        std::exit(code);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(query(held.get(), "SELECT 2") == "2");
    held.release();
    delete p;
}
