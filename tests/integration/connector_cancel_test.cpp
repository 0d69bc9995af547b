// close() on a connection whose command is still running cancels it first, so
// the backend does not run on in the server after the client has gone; a
// cancel that cannot be delivered holds close() no longer than cancel_timeout.

#include "connector_support.hpp"

#include <pqpool/connector/libpq.hpp>

#include <chrono>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using namespace pqpool::test::connector;
using pqpool::libpq_connector;
using pqpool::libpq_options;
using pqpool::test::admin;
using pqpool::test::named;
using pqpool::test::unique_name;

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
    const auto start = clock_type::now();
    c.close(h);
    const auto took = clock_type::now() - start;
    CAPTURE(std::chrono::duration_cast<std::chrono::milliseconds>(took).count());
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
    const auto start = clock_type::now();
    c.close(h);
    const auto took = clock_type::now() - start;
    CAPTURE(std::chrono::duration_cast<std::chrono::milliseconds>(took).count());
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
    const auto give_up = clock_type::now() + 10s;
    while (PQisBusy(h) && clock_type::now() < give_up) {
        pollfd p{PQsocket(h), POLLIN, 0};
        REQUIRE(::poll(&p, 1, 100) >= 0);
        REQUIRE(PQconsumeInput(h) == 1);
    }
    REQUIRE_FALSE(PQisBusy(h));
    REQUIRE(PQtransactionStatus(h) == PQTRANS_ACTIVE);
    proxy.stall();
    const auto start = clock_type::now();
    c.close(h);
    const auto took = clock_type::now() - start;
    CAPTURE(std::chrono::duration_cast<std::chrono::milliseconds>(took).count());
    CHECK(took < 2500ms); // half the cancel_timeout: no cancel was tried
}
