// Observability against the real server: a pool that has seen every kind of
// event writes a Prometheus exposition that Prometheus's own linter accepts
// (`promtool check metrics`, Debian package prometheus: scripts/install-deps
// installs it; without it the test fails) and whose numbers are what the test
// did; the TLS facts match the sandbox's certificate; no event's text holds a
// piece of the password.

#include "catch.hpp"
#include "child.hpp"
#include "connector_support.hpp"
#include "event_recorder.hpp"
#include "password_role.hpp"

#include <pqpool/observability/logfmt.hpp>
#include <pqpool/observability/prometheus.hpp>
#include <pqpool/observability/tls.hpp>
#include <pqpool/pqpool.hpp>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>

#include <unistd.h>

using namespace std::chrono_literals;
using namespace pqpool;
using test::connector::sbx;

namespace {

// A password no 3-character piece of which is in the rest of a conninfo or in
// any message pqpool or PostgreSQL writes (see bad_input_test.cpp).
const std::string secret = "Vq8Mz-Tw3Lp-Rj6Kd";

std::string role_conninfo(const std::string& password) {
    return "host=" + sbx().var("PQPOOL_TEST_HOST") + " port=" + sbx().var("PQPOOL_TEST_PORT") +
           " dbname=" + sbx().var("PQPOOL_TEST_DBNAME") + " user=" + sbx().var("PQPOOL_TEST_PASSWORD_USER") +
           " password=" + password + " sslmode=require connect_timeout=5";
}

// promtool's verdict on `text`: its exit status and what it printed. A missing
// promtool fails the test.
std::pair<int, std::string> promtool_check(const std::string& text) {
    if (std::system("command -v promtool >/dev/null 2>&1") != 0)
        FAIL("promtool not found: install the Debian package prometheus (scripts/install-deps does)");
    char path[] = "/tmp/pqpool-exposition.XXXXXX";
    const int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    ::close(fd);
    std::ofstream(path) << text;
    const std::string cmd = std::string("promtool check metrics < '") + path + "' 2>&1";
    std::string out;
    FILE* p = ::popen(cmd.c_str(), "r");
    REQUIRE(p != nullptr);
    char buf[512];
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    const int status = ::pclose(p);
    ::unlink(path);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// The value of the series `name{labels}` (labels exactly as written), or -1.
double value_of(const std::string& text, const std::string& series) {
    const std::string prefix = series + " ";
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
        if (line.rfind(prefix, 0) == 0) return std::stod(line.substr(prefix.size()));
    return -1;
}

// The server certificate's notAfter, read from the sandbox's copy of it.
std::chrono::system_clock::time_point sandbox_certificate_not_after() {
    FILE* f = std::fopen(sbx().var("PQPOOL_TEST_SSLROOTCERT").c_str(), "r");
    REQUIRE(f != nullptr);
    X509* cert = PEM_read_X509(f, nullptr, nullptr, nullptr);
    std::fclose(f);
    REQUIRE(cert != nullptr);
    const auto t = detail::asn1_time_point(X509_get0_notAfter(cert));
    X509_free(cert);
    REQUIRE(t.has_value());
    return *t;
}

using obs = observability::combine<observability::counters, observability::histograms, observability::leak_detection,
                                   observability::tls, observability::sink<test::lease_recorder>,
                                   observability::sink<observability::logfmt_writer>>;
using watched_pool = pool<validation::probe, overflow::bounded, retry::exponential_backoff, obs>;

} // namespace

TEST_CASE("a pool that has seen every event: its exposition passes promtool and holds what the test did",
          "[observability][prometheus]") {
    test::role_for_test role{secret};
    test::lease_recorder recorded;
    std::ostringstream log;
    const std::string conninfo = role_conninfo(secret);
    watched_pool p{conninfo, overflow::bounded{.size = 1, .max_overflow = 1, .wait = 5s},
                   retry::exponential_backoff{.attempts = 2, .base = 10ms, .cap = 20ms},
                   obs{observability::counters{}, observability::histograms{},
                       observability::leak_detection{.threshold = 100ms}, observability::tls{},
                       observability::sink<test::lease_recorder>{recorded},
                       observability::sink<observability::logfmt_writer>{observability::logfmt_writer{log, "main"}}}};

    // Two leases (the second an overflow connection), a timeout, an exhausted.
    auto a = p.acquire();
    auto b = p.acquire();
    const int b_pid = PQbackendPID(b.get());
    CHECK_THROWS_AS(p.acquire_for(50ms), timeout_error);
    CHECK_THROWS_AS(p.acquire_for(0ms), exhausted_error);
    // Both held past the leak threshold: maintain() reports them.
    std::this_thread::sleep_for(150ms);
    p.maintain();
    CHECK(recorded.count(event::leak_suspected) == 2);
    b.release(); // leak_returned; kept idle
    a.release(); // leak_returned; one more than the pool keeps idle: trimmed
    // The idle connection's backend is terminated: validation fails (its FATAL 57P01 also moves
    // the epoch: the server may be going away), a new one is opened.
    {
        test::admin admin;
        REQUIRE(test::query(admin.c, "SELECT pg_terminate_backend(" + std::to_string(b_pid) + ", 5000)") == "t");
    }
    {
        auto c = p.acquire();
        c.mark_broken(); // retired, broken
    }
    // Connects refused (the role at its connection limit, 53300: transient): a retry, then the error.
    REQUIRE(role.limit(0));
    CHECK_THROWS_AS(p.acquire(), connect_error);
    REQUIRE(role.limit(-1));
    (void)p.acquire();
    p.invalidate();
    (void)p.acquire(); // the idle one is retired (epoch), a new one opened

    // In a child process the pool detects the fork, abandons the idle connection,
    // opens one of its own, and writes the exposition (the child's pool has now
    // seen every kind of event).
    char path[] = "/tmp/pqpool-exposition-child.XXXXXX";
    const int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    ::close(fd);
    const int code = test::in_child([&] {
        (void)p.acquire();
        std::ofstream out(path);
        write_prometheus(out, p, "main");
        return out ? 0 : 1;
    });
    REQUIRE(code == 0);
    std::ifstream in(path);
    const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    ::unlink(path);
    INFO(text);

    const auto [status, lint] = promtool_check(text);
    INFO("promtool check metrics: " << lint);
    CHECK(status == 0);
    CHECK(lint.empty());

    const std::string pool_label = "db_client_connection_pool_name=\"main\"";
    auto events = [&](const char* kind) {
        return value_of(text, "pqpool_events_total{" + pool_label + ",event=\"" + kind + "\"}");
    };
    auto closed = [&](const char* reason) {
        return value_of(text, "pqpool_connections_closed_total{" + pool_label + ",reason=\"" + reason + "\"}");
    };
    // What the parent did, and the child's fork_detected, abandon, connect, acquire and return.
    CHECK(events("connected") == 6);
    CHECK(events("connect_failed") == 2);
    CHECK(events("retry") == 1);
    CHECK(events("validation_failed") == 1);
    CHECK(events("retired") == 3); // broken, epoch, fork
    CHECK(events("trimmed") == 1);
    CHECK(events("timeout") == 1);
    CHECK(events("exhausted") == 1);
    CHECK(events("fork_detected") == 1);
    CHECK(events("acquired") == 6);
    CHECK(events("returned") == 6);
    CHECK(events("leak_suspected") == 2);
    CHECK(events("leak_returned") == 2);
    for (std::size_t i = 0; i < event_count; ++i)
        CHECK(events(std::string(to_string(static_cast<event>(i))).c_str()) >= 1);
    CHECK(closed("surplus") == 1);
    CHECK(closed("validation") == 1);
    CHECK(closed("broken") == 1);
    CHECK(closed("epoch") == 1);
    CHECK(closed("fork") == 1);
    CHECK(closed("lifetime") == 0);
    CHECK(value_of(text, "db_client_connection_timeouts_total{" + pool_label + "}") == 1);
    CHECK(value_of(text, "db_client_connection_count{" + pool_label + ",db_client_connection_state=\"idle\"}") == 1);
    CHECK(value_of(text, "db_client_connection_count{" + pool_label + ",db_client_connection_state=\"used\"}") == 0);
    CHECK(value_of(text, "db_client_connection_idle_max{" + pool_label + "}") == 1);
    CHECK(value_of(text, "db_client_connection_max{" + pool_label + "}") == 2);
    CHECK(value_of(text, "db_client_connection_pending_requests{" + pool_label + "}") == 0);
    CHECK(value_of(text, "pqpool_invalidations_total{" + pool_label + "}") == 2); // the 57P01, invalidate()
    CHECK(value_of(text, "db_client_connection_create_time_seconds_count{" + pool_label + "}") == 6);
    CHECK(value_of(text, "db_client_connection_wait_time_seconds_count{" + pool_label + "}") == 6);
    CHECK(value_of(text, "db_client_connection_use_time_seconds_count{" + pool_label + "}") == 6);
    CHECK(value_of(text, "db_client_connection_use_time_seconds_sum{" + pool_label + "}") >= 0.3); // a and b
    CHECK(value_of(text, "db_client_connection_use_time_seconds_bucket{" + pool_label + ",le=\"+Inf\"}") == 6);
    // A connect over TLS on loopback takes more than 2^20 ns (1 ms) and less than 2^33 ns (8.6 s).
    CHECK(value_of(text, "db_client_connection_create_time_seconds_bucket{" + pool_label + ",le=\"0.001048576\"}") ==
          0);
    CHECK(value_of(text, "db_client_connection_create_time_seconds_bucket{" + pool_label + ",le=\"8.589934592\"}") ==
          6);
    const std::string server = pool_label + ",server_address=\"" + sbx().var("PQPOOL_TEST_HOST") + "\",server_port=\"" +
                               sbx().var("PQPOOL_TEST_PORT") + "\"";
    const double left = value_of(text, "pqpool_tls_server_certificate_expiry_seconds{" + server + "}");
    const auto expected_left = std::chrono::duration_cast<std::chrono::seconds>(sandbox_certificate_not_after() -
                                                                                std::chrono::system_clock::now());
    CHECK(std::abs(left - static_cast<double>(expected_left.count())) <= 60);
    CHECK(text.find("pqpool_tls_connection_info{" + server + ",protocol=\"TLSv1.3\",cipher=\"") != std::string::npos);

    // No piece of the password in any event's text, in the log, or in the exposition.
    for (const auto& e : recorded.events()) test::check_no_password(e.error, secret, conninfo);
    CHECK(recorded.of(event::connect_failed).at(0).sqlstate == "53300");
    CHECK(recorded.of(event::connect_failed).at(0).error.find("too many connections") != std::string::npos);
    test::check_no_password(log.str(), secret, conninfo);
    test::check_no_password(text, secret, conninfo);
    CHECK(log.str().find("event=connect_failed connect_ms=") != std::string::npos);
    CHECK(log.str().find(" sqlstate=53300 transient=true error=") != std::string::npos);
    CHECK(log.str().find("event=leak_suspected") != std::string::npos);
}

TEST_CASE("every pool name gives an exposition promtool accepts: quotes, backslashes, line breaks, bytes that are "
          "not UTF-8",
          "[observability][prometheus]") {
    pqpool::pool<observability::counters> p{"host=localhost"}; // no connection needed: stats and counters
    for (const std::string& name : {std::string("q\"uo\\te\nnl"), std::string("caf\xe9-latin1"),
                                    std::string("a\xff\xfe"
                                                "b"),
                                    std::string("cut \xe2\x82"), std::string("caf\xc3\xa9")}) {
        const std::string text = prometheus_exposition().add(p, "ok").add(p, name).str();
        const auto [status, said] = promtool_check(text);
        INFO("pool name of " << name.size() << " bytes; promtool: " << said);
        CHECK(status == 0);
    }
}

TEST_CASE("a wrong password: the connect_failed event says so without the password", "[observability]") {
    const std::string wrong = "Gz4Hn-Bc7Xs-Wm2Fy";
    test::event_recorder recorded;
    const std::string conninfo = role_conninfo(wrong);
    pool<observability::sink<test::event_recorder>> p{conninfo, observability::sink<test::event_recorder>{recorded}};
    CHECK_THROWS_AS(p.acquire(), connect_error);
    const auto failed = recorded.of(event::connect_failed);
    REQUIRE(failed.size() == 1);
    CHECK(failed[0].sqlstate == "28P01");
    CHECK_FALSE(failed[0].transient);
    CHECK(failed[0].connect_time.has_value());
    test::check_no_password(failed[0].error, wrong, conninfo);
    test::check_no_password(failed[0].error, sbx().password(), conninfo);
}

TEST_CASE("TLS facts: protocol, cipher and the server certificate's expiry, as the sandbox made them",
          "[observability][tls]") {
    const auto not_after = sandbox_certificate_not_after();
    SECTION("sslmode=verify-full through localhost") {
        pool<observability::tls> p{sbx().verify_full()};
        auto l = p.acquire();
        const auto servers = p.observer().servers();
        REQUIRE(servers.size() == 1);
        const tls_facts& f = servers[0];
        CHECK(f.server_address == "localhost");
        CHECK(f.server_port == sbx().var("PQPOOL_TEST_PORT"));
        CHECK(f.protocol == PQsslAttribute(l.get(), "protocol"));
        CHECK(f.protocol == "TLSv1.3");
        CHECK(f.cipher == PQsslAttribute(l.get(), "cipher"));
        CHECK_FALSE(f.cipher.empty());
        CHECK(f.library == "OpenSSL");
        CHECK(f.key_bits >= 128);
        CHECK(f.certificate_subject == "CN=localhost");
        REQUIRE(f.certificate_not_after.has_value());
        CHECK(*f.certificate_not_after == not_after);
        const auto left = f.certificate_expires_in();
        REQUIRE(left.has_value());
        CHECK(*left > std::chrono::seconds{0});
        CHECK(*left <= std::chrono::hours{24 * 30} + std::chrono::minutes{1}); // made with -days 30
        CHECK(p.observer().earliest_expiry()->certificate_not_after == not_after);
    }
    SECTION("no TLS: no facts, and no TLS series in the exposition") {
        pool<observability::tls> p{sbx().plain()};
        (void)p.acquire();
        CHECK(p.observer().servers().empty());
        std::ostringstream out;
        write_prometheus(out, p, "plain");
        CHECK(out.str().find("pqpool_tls_") == std::string::npos);
        CHECK(promtool_check(out.str()).first == 0);
    }
}
