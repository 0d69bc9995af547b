// Pools on a dead network path, for real (a private network namespace, nft
// dropping every packet of the server's port): what the pool promises there.
// - run() turns a query hanging on a dead path into a retry on a fresh
//   connection and succeeds once the path heals;
// - acquire() keeps its bound while the path is dead;
// - idle connections on a dead path are found dead (keepalives) and replaced;
// - with the pool's default TCP settings (no keyword in the connection
//   string), a query in flight on a dead path fails within tcp_user_timeout
//   (30 s) instead of hanging.

#include "catch.hpp"
#include "netns.hpp"
#include "pq_wait.hpp"

#include <pqpool/pqpool.hpp>

#include <libpq-fe.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

using namespace pqpool;
using namespace std::chrono_literals;
namespace netns = pqpool::test::netns;
using pqpool::test::pq_outcome;
using steady = std::chrono::steady_clock;

namespace {

// Short TCP settings, so that the tests see in seconds what the defaults do in a minute.
const std::string quick =
    " keepalives=1 keepalives_idle=1 keepalives_interval=1 keepalives_count=2 tcp_user_timeout=2000 connect_timeout=2";

constexpr auto margin = 500ms;

std::chrono::milliseconds since(steady::time_point t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - t);
}

std::string select_value(PGconn* c, const std::string& sql) {
    PGresult* r = PQexec(c, sql.c_str());
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        const std::string msg = PQresultErrorMessage(r);
        PQclear(r);
        throw std::runtime_error(msg);
    }
    std::string v = PQgetvalue(r, 0, 0);
    PQclear(r);
    return v;
}

} // namespace

TEST_CASE("run() on a dead path: the query fails within tcp_user_timeout, run() succeeds once the path heals",
          "[netns][run]") {
    pool<overflow::bounded> p{netns::conninfo() + quick, overflow::bounded{.size = 2, .max_overflow = 0, .wait = 3s},
                              retry::exponential_backoff{.attempts = 30, .base = 100ms, .cap = 500ms}};
    { auto warm = p.acquire(); }
    std::atomic<bool> in_flight{false};
    netns::dropped_port cut{netns::server_port()};
    std::thread healer([&] {
        while (!in_flight) std::this_thread::yield();
        std::this_thread::sleep_for(5s);
        cut.heal();
    });
    const auto start = steady::now();
    int calls = 0;
    std::string v;
    try {
        v = p.run([&](PGconn* c) {
            ++calls;
            in_flight = true;
            return select_value(c, "SELECT 'survived'"); // sent on a dead path: no ACK, ever
        });
    } catch (...) {
        healer.join();
        throw;
    }
    healer.join();
    CHECK(v == "survived");
    CHECK(calls >= 2);              // the first attempt failed: it did not hang until the heal
    CHECK(since(start) < 5s + 10s); // the heal at 5 s, then a connect and the query
}

TEST_CASE("acquire() keeps its bound while the path is dead", "[netns][time_bounds]") {
    pool<> p{netns::conninfo() + quick, overflow::bounded{.size = 2, .max_overflow = 0, .wait = 1s},
             validation::ping_if_idle{.idle_for = 0ms, .timeout = 5s}};
    { auto a = p.acquire(), b = p.acquire(); }
    std::this_thread::sleep_for(20ms);
    netns::dropped_port cut{netns::server_port()};
    for (int i = 0; i < 3; ++i) {
        const auto start = steady::now();
        CHECK_THROWS_AS(p.acquire(), timeout_error);
        CHECK(since(start) < 1s + margin);
    }
    cut.heal();
    bool served = false;
    for (int i = 0; i < 20 && !served; ++i) {
        try {
            auto l = p.acquire_for(3s);
            served = select_value(l.get(), "SELECT 1") == "1";
        } catch (const error&) {}
    }
    CHECK(served);
}

TEST_CASE("idle connections on a dead path are found dead by keepalives and replaced", "[netns][validation]") {
    pool<validation::probe, observability::counters> p{netns::conninfo() + quick,
                                                       overflow::bounded{.size = 3, .max_overflow = 0, .wait = 10s}};
    { auto a = p.acquire(), b = p.acquire(), c = p.acquire(); }
    {
        netns::dropped_port cut{netns::server_port()};
        std::this_thread::sleep_for(5s); // keepalives: 1 s idle, 2 probes 1 s apart, and the 2 s user timeout
    }
    for (int i = 0; i < 3; ++i) {
        auto l = p.acquire();
        CHECK(select_value(l.get(), "SELECT 1") == "1"); // never a dead connection handed out
    }
    CHECK(p.observer().count(event::validation_failed) >= 1);
}

TEST_CASE("with the default TCP settings a query in flight on a dead path fails within tcp_user_timeout (30 s)",
          "[netns][defaults][slow]") {
    pool<> p{netns::conninfo()}; // no keepalive or tcp_user_timeout keyword: the pool's defaults apply
    auto l = p.acquire();
    netns::dropped_port cut{netns::server_port()};
    const auto start = steady::now();
    REQUIRE(PQsendQuery(l.get(), "SELECT 1") == 1);
    const pq_outcome o = pqpool::test::wait_result(l.get(), 60s);
    INFO(o.what << ": " << o.text);
    CHECK(o.what == pq_outcome::kind::error);
    CHECK(since(start) > 20s);       // the user timeout, not something else that broke the connection
    CHECK(since(start) < 30s + 10s); // ...and not libpq's and the kernel's defaults (about 15 min)
    l.mark_broken();
}
