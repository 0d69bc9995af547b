// Retry against a real PostgreSQL: a server that stops and comes back, one
// that stays down, a full connection limit, and work whose backend is killed.

#include "catch.hpp"
#include "pg.hpp"
#include "sandbox.hpp"

#include <pqpool/pqpool.hpp>

#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace pqpool;
using namespace std::chrono_literals;
using test::query;
using test::sandbox;

namespace {

using retry_pool = pool<validation::probe, overflow::fixed, observability::counters>;

// Stops the sandbox server now and starts it again when it goes out of scope,
// whatever the test did, so later tests find it up.
struct server_down {
    server_down() { sandbox::get().ctl("stop"); }
    void start() {
        sandbox::get().ctl("start");
        up_ = true;
    }
    ~server_down() {
        if (up_) return;
        try {
            start();
        } catch (...) {}
    }

private:
    bool up_ = false;
};

} // namespace

TEST_CASE("the server stops and comes back 1 s later: every run() succeeds, attempts stay bounded",
          "[integration][retry]") {
    const retry::exponential_backoff backoff{.attempts = 40, .base = 50ms, .cap = 300ms, .connecting = 2};
    retry_pool p{sandbox::get().tls(), overflow::fixed{.size = 4, .wait = 30s}, backoff};
    std::atomic<int> ok{0};
    std::mutex m;
    std::vector<std::string> errors; // Catch2 2.x assertions are not thread-safe: report after join
    {
        server_down down;
        std::vector<std::thread> callers;
        for (int i = 0; i < 8; ++i)
            callers.emplace_back([&] {
                try {
                    if (p.run([](PGconn* c) { return query(c, "SELECT 1"); }) == "1") ++ok;
                } catch (const std::exception& e) {
                    std::lock_guard lock(m);
                    errors.push_back(e.what());
                }
            });
        std::this_thread::sleep_for(1s);
        down.start();
        for (auto& t : callers) t.join();
    }
    for (const auto& e : errors) UNSCOPED_INFO(e);
    CHECK(ok == 8);
    const auto failed = p.observer().count(event::connect_failed);
    const auto connected = p.observer().count(event::connected);
    INFO("failed attempts " << failed << ", connections " << connected);
    CHECK(failed >= 1);                    // the server really was down
    CHECK(failed <= 2 * backoff.attempts); // at most `connecting` budgets, not one per thread
    CHECK(connected <= 4);
}

TEST_CASE("a server that stays down: every caller fails after the retry budget, none hangs", "[integration][retry]") {
    // The backoff is long enough (each budget takes about 0.5 s) that all eight callers are in
    // line before the first budget ends, even on a loaded machine: a caller arriving after it
    // would rightly start a budget of its own.
    retry_pool p{sandbox::get().tls(), overflow::fixed{.size = 4, .wait = 30s},
                 retry::exponential_backoff{.attempts = 3, .base = 250ms, .cap = 250ms, .connecting = 2}};
    server_down down;
    std::atomic<int> connect_errors{0}, ready{0};
    std::atomic<bool> go{false};
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> callers;
    for (int i = 0; i < 8; ++i)
        callers.emplace_back([&] {
            ++ready;
            while (!go) std::this_thread::yield();
            try {
                p.run([](PGconn* c) { return query(c, "SELECT 1"); });
            } catch (const connect_error& e) {
                if (e.transient()) ++connect_errors;
            }
        });
    while (ready < 8) std::this_thread::yield();
    go = true;
    for (auto& t : callers) t.join();
    CHECK(connect_errors == 8);
    CHECK(std::chrono::steady_clock::now() - start < 10s);
    CHECK(p.observer().count(event::connect_failed) <= 2 * 3);
    CHECK(p.stats() == pool_stats{});
}

TEST_CASE("a full connection limit (53300) is retried with backoff until a slot frees", "[integration][retry]") {
    const auto& sb = sandbox::get();
    PGconn* admin = PQconnectdb(sb.tls().c_str());
    REQUIRE(PQstatus(admin) == CONNECTION_OK);
    PQclear(PQexec(admin, "DROP ROLE IF EXISTS pqpool_limited"));
    PGresult* r = PQexec(admin, "CREATE ROLE pqpool_limited LOGIN CONNECTION LIMIT 1");
    REQUIRE(PQresultStatus(r) == PGRES_COMMAND_OK);
    PQclear(r);
    const std::string limited = "host=" + sb.var("PQPOOL_TEST_HOST") + " port=" + sb.var("PQPOOL_TEST_PORT") +
                                " dbname=" + sb.var("PQPOOL_TEST_DBNAME") + " user=pqpool_limited sslmode=require";
    PGconn* hog = PQconnectdb(limited.c_str());
    REQUIRE(PQstatus(hog) == CONNECTION_OK);
    std::thread freer([&] {
        std::this_thread::sleep_for(400ms);
        PQfinish(hog);
    });
    {
        retry_pool p{limited, overflow::fixed{.size = 1, .wait = 20s},
                     retry::exponential_backoff{.attempts = 30, .base = 50ms, .cap = 200ms}};
        CHECK(query(p.acquire().get(), "SELECT 1") == "1");
        CHECK(p.observer().count(event::connect_failed) >= 1);
        CHECK(p.observer().count(event::retry) >= 1);
    }
    freer.join();
    PQclear(PQexec(admin, "DROP ROLE IF EXISTS pqpool_limited"));
    PQfinish(admin);
}

TEST_CASE("run(): work whose backend is killed mid-way runs again on a fresh connection", "[integration][retry]") {
    retry_pool p{sandbox::get().tls(), overflow::fixed{.size = 2}};
    int calls = 0;
    const std::string pid_seen = p.run([&](PGconn* c) {
        ++calls;
        if (calls == 1) {
            // The backend dies during the work: 57P01, then the connection is gone.
            PGresult* r = PQexec(c, "SELECT pg_terminate_backend(pg_backend_pid())");
            PQclear(r);
            PQclear(PQexec(c, "SELECT 1"));
            throw std::runtime_error(PQerrorMessage(c));
        }
        return query(c, "SELECT 1");
    });
    CHECK(calls == 2);
    CHECK(pid_seen == "1");
    CHECK(p.observer().count(event::retry) == 1);

    // A syntax error is the work's own failure: never retried.
    calls = 0;
    CHECK_THROWS(p.run([&](PGconn* c) {
        ++calls;
        PGresult* r = PQexec(c, "SELEC 1");
        const bool failed = PQresultStatus(r) != PGRES_TUPLES_OK;
        PQclear(r);
        if (failed) throw std::runtime_error(PQerrorMessage(c));
        return 0;
    }));
    CHECK(calls == 1);
}
