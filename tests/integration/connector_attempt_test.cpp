// Resumable connect attempts: callers with very short (or already passed)
// deadlines still finish a TLS handshake and the setup statements over
// several calls, from any thread; the per-host timeout holds whatever the
// deadlines; time parked while the server had answered is not held against it.

#include "connector_support.hpp"

#include <pqpool/connector/libpq.hpp>

#include <chrono>
#include <string>
#include <thread>
#include <utility>

using namespace std::chrono_literals;
using namespace pqpool::test::connector;
using pqpool::connect_error;
using pqpool::connector;
using pqpool::libpq_connector;
using pqpool::libpq_options;
using pqpool::test::query;

static_assert(connector<libpq_connector>);

namespace {

// Drives `a` with deadlines `wait` from now until it yields a connection
// (counting the calls) or 20 s pass.
PGconn* drive(const libpq_connector& c, libpq_connector::attempt& a, std::chrono::milliseconds wait, int& calls,
              std::chrono::milliseconds pause = 0ms) {
    const auto end = clock_type::now() + 20s;
    while (clock_type::now() < end) {
        ++calls;
        if (PGconn* h = c.continue_connect(a, clock_type::now() + wait)) return h;
        std::this_thread::sleep_for(pause);
    }
    return nullptr;
}

// Starts `a` with a deadline already passed, so that it is left unfinished
// (in progress, for a later call to go on with). On a loaded machine the
// server may answer each step before the next one is tried, and one call then
// connects outright: that connection is closed and the start tried again.
// False when 20 starts in a row connected.
bool start_unfinished(const libpq_connector& c, libpq_connector::attempt& a) {
    for (int i = 0; i < 20; ++i) {
        if (PGconn* h = c.continue_connect(a, clock_type::now())) {
            c.close(h);
            continue;
        }
        return a.in_progress();
    }
    return false;
}

} // namespace

TEST_CASE("libpq_connector: 1 ms deadlines finish a TLS handshake over several calls", "[integration][libpq]") {
    const libpq_connector c{sbx().tls()};
    // On a loaded machine (or under TSan) the client may be slow enough that the server has
    // answered each step before the next is tried, and one call then connects outright: the
    // connect is tried again, up to 10 times, until one takes several calls.
    int calls = 0;
    for (int tries = 0; tries < 10 && calls <= 1; ++tries) {
        libpq_connector::attempt a;
        CHECK_FALSE(a.in_progress());
        calls = 0;
        scoped h{c, drive(c, a, 1ms, calls)};
        REQUIRE(h.h != nullptr);
        CHECK_FALSE(a.in_progress());
        CHECK(PQsslInUse(h.h) == 1);
        CHECK(query(h.h, "SELECT 1") == "1");
    }
    CAPTURE(calls);
    CHECK(calls > 1);
}

TEST_CASE("libpq_connector: deadlines already passed still make the progress that needs no waiting",
          "[integration][libpq]") {
    const libpq_connector c{sbx().tls()};
    libpq_connector::attempt a;
    int calls = 0;
    scoped h{c, drive(c, a, -1s, calls, 2ms)};
    CAPTURE(calls);
    REQUIRE(h.h != nullptr);
    CHECK(query(h.h, "SELECT 1") == "1");
}

TEST_CASE("libpq_connector: an attempt is moved to and continued by another thread", "[integration][libpq]") {
    const libpq_connector c{sbx().tls()};
    libpq_connector::attempt started;
    bool unfinished = false;
    std::thread([&] { unfinished = start_unfinished(c, started); }).join();
    REQUIRE(unfinished);
    libpq_connector::attempt moved = std::move(started);
    PGconn* h = nullptr;
    std::thread([&] { h = c.continue_connect(moved, in(10s)); }).join();
    scoped guard{c, h};
    REQUIRE(h != nullptr);
    CHECK(query(h, "SELECT 1") == "1");
}

TEST_CASE("libpq_connector: time parked while the server had answered is not held against the host",
          "[integration][libpq]") {
    const libpq_connector c{sbx().tls(), libpq_options{.connect_timeout = 500ms}};
    libpq_connector::attempt a;
    REQUIRE(start_unfinished(c, a));
    std::this_thread::sleep_for(1500ms); // three connect timeouts: the server answered long ago
    scoped h{c, c.continue_connect(a, in(10s))};
    REQUIRE(h.h != nullptr);
    CHECK(query(h.h, "SELECT 1") == "1");
}

TEST_CASE("libpq_connector: a silent server times out at the per-host timeout, whatever the deadlines",
          "[integration][libpq]") {
    local_socket blackhole{true};
    const libpq_connector c{local_conninfo(blackhole.port), libpq_options{.connect_timeout = 300ms}};
    libpq_connector::attempt a;
    const auto start = clock_type::now();
    int calls = 0;
    try {
        drive(c, a, -1s, calls, 10ms);
        FAIL("connected to a server that never answers");
    } catch (const connect_error& e) {
        CAPTURE(e.what());
        CHECK(std::string(e.what()).find("timed out after 300 ms") != std::string::npos);
        CHECK(e.transient());
    }
    const auto took = clock_type::now() - start;
    CAPTURE(calls, std::chrono::duration_cast<std::chrono::milliseconds>(took).count());
    CHECK_FALSE(a.in_progress());
    CHECK(took >= 300ms);
    CHECK(took < 3s);
}

TEST_CASE("libpq_connector: setup statements resume across calls", "[integration][libpq]") {
    const libpq_connector c{
        sbx().tls(), libpq_options{.setup = {"SELECT pg_sleep(0.3)", "SET application_name = 'pqpool_resumed'"}}};
    libpq_connector::attempt a;
    int calls = 0;
    scoped h{c, drive(c, a, 1ms, calls)};
    CAPTURE(calls);
    REQUIRE(h.h != nullptr);
    CHECK(calls > 10); // the sleep alone spans many 1 ms calls
    CHECK(query(h.h, "SHOW application_name") == "pqpool_resumed");
    CHECK(PQisnonblocking(h.h) == 0); // handed out in libpq's default mode
}

TEST_CASE("libpq_connector: a setup statement slower than io_timeout fails the attempt", "[integration][libpq]") {
    const libpq_connector c{sbx().tls(), libpq_options{.io_timeout = 300ms, .setup = {"SELECT pg_sleep(5)"}}};
    const auto start = clock_type::now();
    try {
        c.close(c.connect(in(30s)));
        FAIL("the setup statement did not time out");
    } catch (const connect_error& e) {
        CAPTURE(e.what());
        CHECK(std::string(e.what()).find("setup[0] failed: timed out after 300 ms") != std::string::npos);
        CHECK(e.transient());
    }
    CHECK(clock_type::now() - start < 3s);
}

TEST_CASE("libpq_connector: cancel_connect and abandon_connect leave the attempt empty", "[integration][libpq]") {
    const libpq_connector c{sbx().tls()};
    libpq_connector::attempt a;
    REQUIRE(start_unfinished(c, a));
    REQUIRE(a.in_progress());
    c.cancel_connect(a);
    CHECK_FALSE(a.in_progress());
    c.cancel_connect(a); // an empty attempt is ignored

    REQUIRE(start_unfinished(c, a));
    REQUIRE(a.in_progress());
    c.abandon_connect(a);
    CHECK_FALSE(a.in_progress());
    c.abandon_connect(a);

    // And it starts afresh.
    scoped h{c, c.continue_connect(a, in(10s))};
    REQUIRE(h.h != nullptr);
    CHECK(query(h.h, "SELECT 1") == "1");
}
