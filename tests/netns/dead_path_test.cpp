// A dead network path, for real: each test runs in a private network namespace
// with a PostgreSQL of its own (scripts/netns-run), and nft drops every packet
// of the server's port (tests/support/netns.hpp). No kernel on the path ACKs
// anything, which no proxy can show. Plain libpq with explicit settings, and
// in each test a control connection without keepalives or tcp_user_timeout
// that, on the same dead path and over the same time, notices nothing.

#include "catch.hpp"
#include "netns.hpp"
#include "pq_wait.hpp"
#include "sockets.hpp"

#include <libpq-fe.h>
#include <poll.h>

#include <chrono>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
namespace netns = pqpool::test::netns;
using pqpool::test::connect_or_throw;
using pqpool::test::pq_outcome;
using pqpool::test::pq_ptr;
using pqpool::test::query_within;
using clock_type = std::chrono::steady_clock;

namespace {

// A dead path is an error within about tcp_user_timeout (2 s) when a send is
// unanswered, and within keepalives_idle + keepalives_count * interval (3 s)
// when the connection is idle.
const std::string guarded =
    " keepalives=1 keepalives_idle=1 keepalives_interval=1 keepalives_count=2 tcp_user_timeout=2000";
// libpq's and the kernel's defaults without them: a dead path goes unnoticed for
// about 15 minutes of retransmissions, or for ever when idle.
const std::string unguarded = " keepalives=0 tcp_user_timeout=0";

// Runs `sql` (10 s at most); its first value. Fails the test on an error or a timeout.
std::string query(PGconn* c, const std::string& sql) {
    const auto o = query_within(c, sql, 10s);
    INFO(sql << ": " << o.what << ": " << o.text);
    REQUIRE(o.what == pq_outcome::kind::result);
    return o.text;
}

// An application_name no other test run uses.
std::string unique_app(const char* prefix) {
    return std::string(prefix) + "_" + std::to_string(std::random_device{}() % 1000000000);
}

struct watched {
    PGconn* c;
    bool in_flight;                                 // a command was sent: its result counts as an end too
    std::optional<std::chrono::milliseconds> ended; // when it failed (or finished), from the watch's start
    std::string message;
};

// Until `until`, reads whatever each connection's socket shows and records when
// its connection broke (or, for one with a command in flight, when the command
// ended). Returns early once every connection has ended.
void watch(std::vector<watched*> ws, clock_type::time_point t0, clock_type::time_point until) {
    for (auto now = clock_type::now(); now < until; now = clock_type::now()) {
        std::vector<pollfd> fds;
        std::vector<watched*> live;
        for (watched* w : ws) {
            if (w->ended) continue;
            fds.push_back(pollfd{PQsocket(w->c), static_cast<short>(POLLIN | POLLRDHUP), 0});
            live.push_back(w);
        }
        if (live.empty()) return;
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(until - now);
        if (::poll(fds.data(), fds.size(), static_cast<int>(left.count())) <= 0) continue;
        for (std::size_t i = 0; i < fds.size(); ++i) {
            if (!fds[i].revents) continue;
            watched& w = *live[i];
            const auto at = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - t0);
            if (!PQconsumeInput(w.c) || PQstatus(w.c) == CONNECTION_BAD) {
                w.ended = at;
                w.message = PQerrorMessage(w.c);
            } else if (w.in_flight && !PQisBusy(w.c)) {
                w.ended = at;
                w.message = "finished: " + pqpool::test::wait_result(w.c, 1s).text;
            } else if (fds[i].revents & (POLLHUP | POLLERR | POLLRDHUP)) {
                w.ended = at; // a hang-up libpq did not (yet) call an error: still an end
                w.message = "hang-up";
            }
        }
    }
}

// Ends the test's leftover backends on the server: a connection the client
// gave up on stays open on the server until the server's own keepalives (two
// hours by default) find it dead.
void terminate_backends(const std::string& app) {
    auto admin = connect_or_throw(netns::conninfo());
    const std::string sessions = "FROM pg_stat_activity WHERE application_name = '" + app + "'";
    query(admin.get(), "SELECT count(pg_terminate_backend(pid)) " + sessions);
    std::string left = query(admin.get(), "SELECT count(*) " + sessions);
    for (int i = 0; i < 250 && left != "0"; ++i) { // a terminated backend leaves the view a moment later
        std::this_thread::sleep_for(20ms);
        left = query(admin.get(), "SELECT count(*) " + sessions);
    }
    CHECK(left == "0");
}

// Two connections to the in-namespace server, one with the settings above and
// one without, named `app` for the server's view, each with a query done; and
// their watch records.
struct guarded_and_not {
    std::string app;
    pq_ptr g_conn, u_conn;
    watched g, u;

    guarded_and_not(const char* prefix, bool in_flight)
        : app(unique_app(prefix)),
          g_conn(connect_or_throw(netns::conninfo() + guarded + " application_name=" + app)),
          u_conn(connect_or_throw(netns::conninfo() + unguarded + " application_name=" + app)),
          g{g_conn.get(), in_flight, {}, {}},
          u{u_conn.get(), in_flight, {}, {}} {
        REQUIRE(query(g.c, "SELECT 1") == "1");
        REQUIRE(query(u.c, "SELECT 1") == "1");
    }

    // After the watch: the guarded connection broke with a TCP timeout, no
    // sooner than `not_before` and before `bound`; the other noticed nothing.
    void check(std::chrono::milliseconds not_before, std::chrono::milliseconds bound) const {
        INFO("guarded: " << g.message);
        INFO("unguarded: " << u.message);
        REQUIRE(g.ended.has_value());
        CHECK(*g.ended >= not_before);
        CHECK(*g.ended < bound);
        CHECK_THAT(g.message, Catch::Contains("timed out"));
        CHECK(PQstatus(g.c) == CONNECTION_BAD);
        CHECK_FALSE(u.ended.has_value());
        CHECK(PQstatus(u.c) == CONNECTION_OK);
    }
};

} // namespace

TEST_CASE("a query in flight on a dropped path fails within tcp_user_timeout and hangs without it", "[netns]") {
    const auto fds_before = pqpool::test::net::open_fd_count();
    {
        guarded_and_not conns{"netns_in_flight", true};
        {
            netns::dropped_port cut{netns::server_port()};
            const auto t0 = clock_type::now();
            REQUIRE(PQsendQuery(conns.g.c, "SELECT 1") == 1);
            REQUIRE(PQsendQuery(conns.u.c, "SELECT 1") == 1);
            REQUIRE(PQflush(conns.g.c) == 0); // all in the kernel's send buffer: now unanswered
            REQUIRE(PQflush(conns.u.c) == 0);
            watch({&conns.g, &conns.u}, t0, t0 + 6s); // 3 x tcp_user_timeout
        }
        // Not at once: after the retransmissions went unanswered for about tcp_user_timeout (2 s).
        conns.check(1500ms, 5s);
        CHECK(PQisBusy(conns.u.c) == 1); // still waiting after 6 s
        terminate_backends(conns.app);   // healed: the server ends both sessions (u's client sees it)
    }
    CHECK(pqpool::test::net::open_fd_count() == fds_before);
}

TEST_CASE("an idle connection on a dropped path is found dead by keepalives and looks alive without them", "[netns]") {
    guarded_and_not conns{"netns_idle", false};
    {
        netns::dropped_port cut{netns::server_port()};
        const auto t0 = clock_type::now();
        watch({&conns.g, &conns.u}, t0, t0 + 6s); // 2 x the keepalive bound (3 s)
    }
    conns.check(1s, 5s); // keepalives_idle: not before the first probe
    // Healed, it works again: it never knew (a pool could not have told either).
    CHECK(query_within(conns.u.c, "SELECT 1", 5s).text == "1");
    terminate_backends(conns.app);
}

TEST_CASE("while dropped new connections time out and after heal() they work", "[netns]") {
    {
        netns::dropped_port cut{netns::server_port()};
        netns::drop_port(netns::server_port()); // twice: harmless
        const auto t0 = clock_type::now();
        pq_ptr c{PQconnectdb((netns::conninfo() + " connect_timeout=2").c_str())};
        const auto took = clock_type::now() - t0;
        INFO(PQerrorMessage(c.get()));
        CHECK(PQstatus(c.get()) == CONNECTION_BAD);
        CHECK_THAT(PQerrorMessage(c.get()), Catch::Contains("timeout expired"));
        CHECK(took >= 1500ms);
    }              // the guard heals
    netns::heal(); // idempotent

    auto c = connect_or_throw(netns::conninfo() + guarded + " connect_timeout=5");
    CHECK(query(c.get(), "SELECT 1") == "1");
}
