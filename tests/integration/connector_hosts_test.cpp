// Several hosts, target_session_attrs and the connect timeout: each host gets
// its own timeout, as libpq documents, whether it comes from the connection
// string or from libpq_options; huge timeouts mean "no limit of our own" and
// never wrap.

#include "connector_support.hpp"

#include <pqpool/connector/libpq.hpp>

#include <chrono>
#include <string>

using namespace std::chrono_literals;
using namespace pqpool::test::connector;
using pqpool::connect_error;
using pqpool::libpq_connector;
using pqpool::libpq_options;
using pqpool::test::query;

namespace {

std::string sandbox_port() { return sbx().var("PQPOOL_TEST_PORT"); }

// The sandbox's database and user over TLS, at the given hosts and ports.
std::string hosts_conninfo(const std::string& hosts, const std::string& ports, const std::string& extra = {}) {
    return "host=" + hosts + " port=" + ports + " dbname=" + sbx().var("PQPOOL_TEST_DBNAME") +
           " user=" + sbx().var("PQPOOL_TEST_USER") + " sslmode=require" + (extra.empty() ? "" : " " + extra);
}

std::chrono::milliseconds since(clock_type::time_point start) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - start);
}

// Connects and returns the error, failing the test if the connect succeeds.
connect_error connect_failure(const libpq_connector& c, std::chrono::milliseconds wait) {
    try {
        c.close(c.connect(in(wait)));
    } catch (const connect_error& e) {
        return e;
    }
    FAIL("the connect succeeded");
    throw std::logic_error("unreachable");
}

} // namespace

TEST_CASE("libpq_connector: a dead first host costs one connect timeout, then the next host is tried",
          "[integration][libpq]") {
    local_socket blackhole{true}; // accepts TCP (the kernel does), never answers
    const std::string ports = std::to_string(blackhole.port) + "," + sandbox_port();

    SECTION("connect_timeout in the connection string") {
        const libpq_connector c{hosts_conninfo("127.0.0.1,127.0.0.1", ports, "connect_timeout=2")};
        const auto start = clock_type::now();
        scoped h{c, c.connect(in(30s))};
        const auto took = since(start);
        CAPTURE(took.count());
        CHECK(query(h.h, "SELECT 1") == "1");
        CHECK(took >= 1900ms);
        CHECK(took < 6s);
    }
    SECTION("libpq_options::connect_timeout, hostaddr list") {
        const libpq_connector c{hosts_conninfo("localhost,localhost", ports, "hostaddr=127.0.0.1,127.0.0.1"),
                                libpq_options{.connect_timeout = 1s}};
        const auto start = clock_type::now();
        scoped h{c, c.connect(in(30s))};
        const auto took = since(start);
        CAPTURE(took.count());
        CHECK(query(h.h, "SELECT 1") == "1");
        CHECK(took >= 900ms);
        CHECK(took < 5s);
    }
    SECTION("target_session_attrs=read-write") {
        const libpq_connector c{hosts_conninfo("127.0.0.1,127.0.0.1", ports, "target_session_attrs=read-write"),
                                libpq_options{.connect_timeout = 1s}};
        scoped h{c, c.connect(in(30s))};
        CHECK(query(h.h, "SHOW transaction_read_only") == "off");
    }
}

TEST_CASE("libpq_connector: when every host refuses, the message says which hosts were tried and why",
          "[integration][libpq]") {
    local_socket blackhole{true};
    local_socket closed{false};
    const int closed_port = closed.port;
    closed.close(); // nobody listens there: refused at once
    const libpq_connector c{
        hosts_conninfo("127.0.0.1,127.0.0.1", std::to_string(closed_port) + "," + std::to_string(blackhole.port)),
        libpq_options{.connect_timeout = 500ms}};
    const auto start = clock_type::now();
    const connect_error e = connect_failure(c, 30s);
    const auto took = since(start);
    const std::string msg = e.what();
    CAPTURE(msg, took.count());
    CHECK(msg.find("host 127.0.0.1:" + std::to_string(closed_port) + ": ") != std::string::npos);
    CHECK(msg.find("Connection refused") != std::string::npos);
    CHECK(msg.find("host 127.0.0.1:" + std::to_string(blackhole.port) + ": timed out after 500 ms") !=
          std::string::npos);
    CHECK(e.transient());
    CHECK(e.sqlstate().empty());
    CHECK(took >= 450ms);
    CHECK(took < 4s);
}

TEST_CASE("libpq_connector: target_session_attrs is checked per host", "[integration][libpq]") {
    // The sandbox is a primary: listed twice, it is the only kind of server there is.
    const std::string two = "127.0.0.1,127.0.0.1";
    const std::string ports = sandbox_port() + "," + sandbox_port();
    const std::string label = "host 127.0.0.1:" + sandbox_port() + ": ";

    SECTION("standby: both refused, each named") {
        const libpq_connector c{hosts_conninfo(two, ports, "target_session_attrs=standby")};
        const connect_error e = connect_failure(c, 30s);
        const std::string msg = e.what();
        CAPTURE(msg);
        const std::string refusal = label + "server is not in hot standby mode";
        const std::size_t first = msg.find(refusal);
        REQUIRE(first != std::string::npos);
        CHECK(msg.find(refusal, first + 1) != std::string::npos);
        CHECK(e.transient()); // a failover in progress may bring one
    }
    SECTION("read-only: refused") {
        const libpq_connector c{hosts_conninfo(two, ports, "target_session_attrs=read-only")};
        const connect_error e = connect_failure(c, 30s);
        CAPTURE(e.what());
        CHECK(std::string(e.what()).find(label + "session is not read-only") != std::string::npos);
    }
    SECTION("prefer-standby: no standby anywhere, so the second pass takes the primary") {
        const libpq_connector c{hosts_conninfo(two, ports, "target_session_attrs=prefer-standby")};
        scoped h{c, c.connect(in(30s))};
        CHECK(query(h.h, "SELECT pg_is_in_recovery()") == "f");
    }
    SECTION("primary and any connect") {
        for (const char* attrs : {"primary", "any"}) {
            const libpq_connector c{hosts_conninfo(two, ports, std::string("target_session_attrs=") + attrs)};
            scoped h{c, c.connect(in(30s))};
            CHECK(query(h.h, "SELECT 1") == "1");
        }
    }
}

TEST_CASE("libpq_connector: a name that does not resolve or a TLS failure moves on to the next host",
          "[integration][libpq]") {
    const std::string db_user = " dbname=" + sbx().var("PQPOOL_TEST_DBNAME") + " user=" + sbx().var("PQPOOL_TEST_USER");
    SECTION("a name that does not resolve") {
        const libpq_connector c{"host=pqpool-no-such-host.invalid,127.0.0.1 port=" + sandbox_port() + db_user +
                                " sslmode=require"};
        scoped h{c, c.connect(in(30s))};
        CHECK(query(h.h, "SELECT 1") == "1");
    }
    SECTION("a certificate for another name") {
        // The sandbox's certificate names localhost and 127.0.0.1, not the first name.
        const libpq_connector c{"host=pqpool-wrong-name,localhost hostaddr=127.0.0.1,127.0.0.1 port=" + sandbox_port() +
                                db_user + " sslmode=verify-full sslrootcert=" + sbx().var("PQPOOL_TEST_SSLROOTCERT")};
        scoped h{c, c.connect(in(30s))};
        CHECK(PQsslInUse(h.h) == 1);
        CHECK(std::string(PQhost(h.h)) == "localhost");
    }
}

TEST_CASE("libpq_connector: a server that refuses (not a network failure) ends the attempt, as in libpq",
          "[integration][libpq]") {
    const libpq_connector c{"host=127.0.0.1,127.0.0.1 port=" + sandbox_port() + "," + sandbox_port() +
                            " dbname=pqpool_no_such_database user=" + sbx().var("PQPOOL_TEST_USER") +
                            " sslmode=disable"};
    const connect_error e = connect_failure(c, 30s);
    const std::string msg = e.what();
    CAPTURE(msg);
    CHECK(e.sqlstate() == "3D000");
    CHECK_FALSE(e.transient());
    CHECK(msg.find("host 127.0.0.1:" + sandbox_port() + ": ") != std::string::npos);
    CHECK(msg.find("; host ") == std::string::npos); // the second host was not tried
}

TEST_CASE("libpq_connector: connect_timeout in the connection string is honoured", "[integration][libpq]") {
    local_socket blackhole{true};
    const libpq_connector c{local_conninfo(blackhole.port) + " connect_timeout=2"};
    CHECK(c.connect_timeout() == 2s);
    const auto start = clock_type::now();
    const connect_error e = connect_failure(c, 60s);
    const auto took = since(start);
    CAPTURE(e.what(), took.count());
    CHECK(std::string(e.what()).find("timed out after 2000 ms") != std::string::npos);
    CHECK(e.transient());
    CHECK(took >= 1900ms);
    CHECK(took < 6s); // libpq_options' default is 10 s
}

TEST_CASE("libpq_connector: huge timeouts mean no limit of our own and never wrap", "[integration][libpq]") {
    constexpr auto forever = std::chrono::milliseconds::max();

    SECTION("connect_timeout = milliseconds::max(): the caller's deadline decides") {
        local_socket blackhole{true};
        const libpq_connector c{local_conninfo(blackhole.port), libpq_options{.connect_timeout = forever}};
        const auto start = clock_type::now();
        const connect_error e = connect_failure(c, 300ms);
        const auto took = since(start);
        CAPTURE(e.what(), took.count());
        CHECK(std::string(e.what()).find("timed out after") != std::string::npos);
        CHECK(took >= 300ms);
        CHECK(took < 3s);
    }
    SECTION("connect_timeout=0 in the connection string: no limit, as in libpq") {
        local_socket blackhole{true};
        const libpq_connector c{local_conninfo(blackhole.port) + " connect_timeout=0"};
        CHECK(c.connect_timeout() == forever);
        const auto start = clock_type::now();
        connect_failure(c, 300ms);
        CHECK(since(start) >= 300ms);
    }
    SECTION("io_timeout = milliseconds::max(): setup and reset still work") {
        const libpq_connector c{sbx().tls(),
                                libpq_options{.io_timeout = forever, .setup = {"SET search_path TO public"}}};
        scoped h{c, c.connect(in(30s))};
        REQUIRE(exec_ok(h.h, "BEGIN"));
        CHECK(c.reset(h.h, true));
        CHECK(PQtransactionStatus(h.h) == PQTRANS_IDLE);
    }
}
