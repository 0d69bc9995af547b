// close() on a connection whose command is still running cancels it first, so
// the backend does not run on in the server after the client has gone; a
// cancel that cannot be delivered holds close() no longer than cancel_timeout,
// one that cannot be sent at all, or a COPY, not at all.

#include "connector_support.hpp"
#include "fault_proxy.hpp"

#include <pqpool/connector/libpq.hpp>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using namespace pqpool::test::connector;
using pqpool::libpq_connector;
using pqpool::libpq_options;
using pqpool::test::admin;
using pqpool::test::fault_proxy;
using pqpool::test::named;
using pqpool::test::unique_name;

namespace {

// How long c.close(h) took.
std::chrono::milliseconds time_close(const libpq_connector& c, PGconn* h) {
    const auto start = clock_type::now();
    c.close(h);
    return std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - start);
}

// How long c->close(h) took; none if it had not returned after `limit` (its
// thread is then left to run on, with the connector kept alive, so a close()
// that never returns fails the test instead of hanging it).
std::optional<std::chrono::milliseconds> close_within(std::shared_ptr<const libpq_connector> c, PGconn* h,
                                                      std::chrono::milliseconds limit) {
    struct state {
        std::mutex m;
        std::condition_variable cv;
        std::optional<std::chrono::milliseconds> took;
    };
    auto s = std::make_shared<state>();
    std::thread([c = std::move(c), h, s] {
        const auto took = time_close(*c, h);
        const std::lock_guard<std::mutex> lock(s->m);
        s->took = took;
        s->cv.notify_all();
    }).detach();
    std::unique_lock<std::mutex> lock(s->m);
    s->cv.wait_for(lock, limit, [&] { return s->took.has_value(); });
    return s->took;
}

// Reads until `h` has a result ready (not busy), 10 s at most.
void wait_not_busy(PGconn* h) {
    const auto give_up = clock_type::now() + 10s;
    while (PQisBusy(h) && clock_type::now() < give_up) {
        pollfd p{PQsocket(h), POLLIN, 0};
        REQUIRE(::poll(&p, 1, 100) >= 0);
        REQUIRE(PQconsumeInput(h) == 1);
    }
    REQUIRE_FALSE(PQisBusy(h));
}

// Connector options: `app` as application_name, a cancel_timeout long enough
// that a close() waiting it out shows, and the server checking every 100 ms
// whether the client is still there, so a backend whose command was not
// cancelled ends soon after its client closed the connection.
libpq_options watched(const std::string& app) {
    return libpq_options{
        .cancel_timeout = 20s,
        .setup = {"SET application_name = '" + app + "'", "SET client_connection_check_interval = '100ms'"}};
}

} // namespace

TEST_CASE("libpq_connector: close() cancels a running command, so its backend goes away", "[integration][libpq]") {
    const std::string app = unique_name("pqpool_cancel");
    const libpq_connector c = named(sbx().tls(), app);
    admin server;
    std::vector<PGconn*> busy;
    for (int i = 0; i < 6; ++i) {
        PGconn* h = c.connect(in(10s));
        REQUIRE(PQsendQuery(h, "SELECT pg_sleep(60)") == 1);
        REQUIRE(PQtransactionStatus(h) == PQTRANS_ACTIVE);
        busy.push_back(h);
    }
    REQUIRE(server.settled_count(app, 6) == 6);
    const auto start = clock_type::now();
    for (PGconn* h : busy) c.close(h);
    const auto took = clock_type::now() - start;
    CAPTURE(std::chrono::duration_cast<std::chrono::milliseconds>(took).count());
    CHECK(took < 6s); // each close waits at most cancel_timeout (1 s)
    // Without the cancel the backends would sleep on for a minute.
    CHECK(server.settled_count(app, 0) == 0);
}

TEST_CASE("libpq_connector: close() cancels again a command that a first cancel reached too early",
          "[integration][libpq]") {
    // A pipeline of two queries, each with its own sync: a cancel stops the
    // first (a short sleep), and the second starts after it, so a single
    // cancel would leave it running after the close, as a cancel that reaches
    // the server before the query does would.
    const std::string app = unique_name("pqpool_cancel_again");
    const libpq_connector c = named(sbx().tls(), app);
    admin server;
    PGconn* h = c.connect(in(10s));
    REQUIRE(PQenterPipelineMode(h) == 1);
    REQUIRE(PQsendQueryParams(h, "SELECT pg_sleep(0.3)", 0, nullptr, nullptr, nullptr, nullptr, 0) == 1);
    REQUIRE(PQpipelineSync(h) == 1);
    REQUIRE(PQsendQueryParams(h, "SELECT pg_sleep(60)", 0, nullptr, nullptr, nullptr, nullptr, 0) == 1);
    REQUIRE(PQpipelineSync(h) == 1);
    REQUIRE(PQtransactionStatus(h) == PQTRANS_ACTIVE);
    REQUIRE(server.settled_count(app, 1) == 1);
    const auto took = time_close(c, h);
    CAPTURE(took.count());
    CHECK(took < 3s); // within cancel_timeout (1 s), with a margin for a loaded machine
    // Without the second cancel the backend would sleep on for a minute.
    CHECK(server.settled_count(app, 0) == 0);
}

TEST_CASE("libpq_connector: a cancel that cannot be delivered holds close() no longer than cancel_timeout",
          "[integration][libpq]") {
    // Through a proxy that goes silent: the cancel request's own connection
    // reaches the proxy's listener and is never answered.
    stall_proxy proxy{std::stoi(sbx().var("PQPOOL_TEST_PORT"))};
    const libpq_connector c{local_conninfo(proxy.port()), libpq_options{.cancel_timeout = 300ms}};
    PGconn* h = c.connect(in(10s));
    REQUIRE(PQsendQuery(h, "SELECT pg_sleep(2)") == 1);
    proxy.stall();
    const auto took = time_close(c, h);
    CAPTURE(took.count());
    CHECK(took >= 250ms);
    CHECK(took < 2s);
}

TEST_CASE("libpq_connector: close() sends no cancel for a command that has ended, its results unread",
          "[integration][libpq]") {
    // The results are in libpq's buffer, unread (the connection still shows a
    // command active); then the proxy goes silent, so a cancel would hold
    // close() for the whole cancel_timeout (5 s).
    stall_proxy proxy{std::stoi(sbx().var("PQPOOL_TEST_PORT"))};
    const libpq_connector c{local_conninfo(proxy.port()), libpq_options{.cancel_timeout = 5s}};
    PGconn* h = c.connect(in(10s));
    REQUIRE(PQsendQuery(h, "SELECT 1") == 1);
    wait_not_busy(h);
    REQUIRE(PQtransactionStatus(h) == PQTRANS_ACTIVE);
    proxy.stall();
    const auto took = time_close(c, h);
    CAPTURE(took.count());
    CHECK(took < 2500ms); // half the cancel_timeout: no cancel was tried
}

TEST_CASE("libpq_connector: close() stops at a cancel that could not be sent, and still closes the connection",
          "[integration][libpq]") {
    // A cancel request is a new TCP connection to the same address: the proxy
    // refuses new connections (connect() gets ECONNREFUSED) while the one in
    // use goes on, so PQcancel fails at once. close() must then close without
    // trying again: sending cancels until the command ends would take the
    // whole cancel_timeout (20 s), the sleep running on.
    const std::string app = unique_name("pqpool_cancel_refused");
    fault_proxy proxy{std::stoi(sbx().var("PQPOOL_TEST_PORT"))};
    const libpq_connector c{proxy.route(sbx().tls()), watched(app)};
    admin server;
    PGconn* h = c.connect(in(10s));
    REQUIRE(PQsendQuery(h, "SELECT pg_sleep(30)") == 1);
    REQUIRE(PQtransactionStatus(h) == PQTRANS_ACTIVE);
    REQUIRE(server.settled_count(app, 1) == 1);
    proxy.refuse_new();
    const auto took = time_close(c, h);
    CAPTURE(took.count());
    // A bound on correctness, not speed: one refused connect takes
    // milliseconds; 5 s is a quarter of the cancel_timeout, room for a loaded machine.
    CHECK(took < 5s);
    // The cancel never reached the backend, so it sleeps on until it sees its
    // client gone (client_connection_check_interval): it ending shows that
    // close() closed the socket (a FIN, passed on by the proxy), so neither
    // the descriptor nor the server connection was left behind.
    CHECK(server.settled_count(app, 0) == 0);
}

TEST_CASE("libpq_connector: close() closes a connection in COPY as it is, without a cancel or a wait",
          "[integration][libpq]") {
    // A COPY cannot be drained by reading (its data would have to be sent, or
    // read to its end), so close() closes at once; with the server's client
    // check on, the backend then ends whether or not it reads the Terminate.
    const std::string app = unique_name("pqpool_close_copy");
    const auto c = std::make_shared<const libpq_connector>(sbx().tls(), watched(app));
    admin server;
    PGconn* h = c->connect(in(10s));
    SECTION("COPY FROM STDIN, some data sent, no end") {
        pqpool::test::query(h, "CREATE TEMP TABLE copy_sink (v text)");
        REQUIRE(PQsendQuery(h, "COPY copy_sink FROM STDIN") == 1);
        wait_not_busy(h);
        PGresult* r = PQgetResult(h);
        REQUIRE(PQresultStatus(r) == PGRES_COPY_IN);
        PQclear(r);
        REQUIRE(PQputCopyData(h, "a\nb\n", 4) == 1);
        int left = 1;
        for (int i = 0; i < 100 && (left = PQflush(h)) == 1; ++i) std::this_thread::sleep_for(10ms);
        REQUIRE(left == 0);
    }
    SECTION("COPY TO STDOUT of a large result, partly read") {
        // Streamed, never held whole: a single generate_series would be
        // computed in full before its first row.
        REQUIRE(PQsendQuery(
                    h, "COPY (SELECT g FROM generate_series(1, 1000) a, generate_series(1, 10000) g) TO STDOUT") == 1);
        wait_not_busy(h);
        PGresult* r = PQgetResult(h);
        REQUIRE(PQresultStatus(r) == PGRES_COPY_OUT);
        PQclear(r);
        char* row = nullptr;
        const auto give_up = clock_type::now() + 10s;
        int n = 0;
        while ((n = PQgetCopyData(h, &row, 1)) == 0 && clock_type::now() < give_up) {
            pollfd p{PQsocket(h), POLLIN, 0};
            REQUIRE(::poll(&p, 1, 100) >= 0);
            REQUIRE(PQconsumeInput(h) == 1);
        }
        REQUIRE(n > 0);
        PQfreemem(row);
    }
    REQUIRE(PQtransactionStatus(h) == PQTRANS_ACTIVE);
    REQUIRE(server.settled_count(app, 1) == 1);
    // A bound on correctness, not speed: no cancel, no wait (a quarter of the
    // 20 s cancel_timeout, room for a loaded machine). A close() that tried to
    // drain the COPY would never return: after 10 s the test fails.
    const auto took = close_within(c, h, 10s);
    REQUIRE(took.has_value());
    CAPTURE(took->count());
    CHECK(*took < 5s);
    CHECK(server.settled_count(app, 0) == 0);
}
