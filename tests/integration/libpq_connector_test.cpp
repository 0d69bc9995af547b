// libpq_connector against a real PostgreSQL (the sandbox: TLS on, a
// self-signed root, a superuser role with trust and a SCRAM password role):
// every transport, SQLSTATEs and transience of failed connects, deadlines that
// hold against a server that never answers, setup statements, no password in
// any message, probe/ping/reset on live and killed backends (TLS and plain),
// and abandon() after fork() leaving the parent's session intact.

#include "connector_support.hpp"

#include <pqpool/connector/libpq.hpp>

#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using namespace pqpool::test::connector;
using pqpool::config_error;
using pqpool::connect_error;
using pqpool::libpq_connector;
using pqpool::libpq_options;
using pqpool::test::query;

namespace {

// Kills h's backend from another session and waits until it is gone
// (pg_terminate_backend with a timeout waits for the process to exit).
void terminate_backend(PGconn* h) {
    admin_conn admin;
    REQUIRE(query(admin.c, "SELECT pg_terminate_backend(" + std::to_string(PQbackendPID(h)) + ", 5000)") == "t");
}

// Polls probe() until it says dead, up to 5 s; returns how long that took.
std::chrono::milliseconds wait_until_probe_fails(const libpq_connector& c, PGconn* h) {
    const auto start = clock_type::now();
    while (c.probe(h)) {
        if (clock_type::now() - start > 5s) break;
        std::this_thread::sleep_for(1ms);
    }
    return std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - start);
}

struct transport {
    const char* name;
    std::string conninfo;
    int ssl_in_use;
};

std::vector<transport> tls_and_plain() { return {{"tls", sbx().tls(), 1}, {"plain", sbx().plain(), 0}}; }

} // namespace

TEST_CASE("libpq_connector: connects over TLS, verify-full, plain TCP and the Unix socket", "[integration][libpq]") {
    const std::vector<transport> transports = {{"tls", sbx().tls(), 1},
                                               {"verify-full", sbx().verify_full(), 1},
                                               {"plain", sbx().plain(), 0},
                                               {"unix socket", sbx().socket(), 0}};
    for (const auto& t : transports) {
        CAPTURE(t.name, t.conninfo);
        const libpq_connector c{t.conninfo};
        scoped h{c, c.connect(in(10s))};
        REQUIRE(h.h != nullptr);
        CHECK(PQstatus(h.h) == CONNECTION_OK);
        CHECK(PQtransactionStatus(h.h) == PQTRANS_IDLE);
        CHECK(query(h.h, "SELECT 1") == "1");
        CHECK(PQsslInUse(h.h) == t.ssl_in_use);
    }
}

TEST_CASE("libpq_connector: the password role, right and wrong, key=value and URI", "[integration][libpq]") {
    const std::string right = sbx().password();
    const std::string wrong = "pqpool-wrong-pw-Zq7x";

    SECTION("the right password connects") {
        for (const auto& ci : {sbx().password_role(right), password_uri(right)}) {
            const libpq_connector c{ci};
            CHECK(c.description().find(right) == std::string::npos);
            CHECK(c.description().find("user=" + sbx().var("PQPOOL_TEST_PASSWORD_USER")) != std::string::npos);
            scoped h{c, c.connect(in(10s))};
            CHECK(query(h.h, "SELECT current_user") == sbx().var("PQPOOL_TEST_PASSWORD_USER"));
            CHECK(PQsslInUse(h.h) == 1);
        }
    }
    SECTION("no password at all: not transient, as PQconnectionNeedsPassword() says") {
        std::string ci = sbx().password_role("x");
        ci.replace(ci.find(" password=x"), 11, " passfile=/nonexistent/pgpass");
        const libpq_connector c{ci};
        try {
            c.connect(in(10s));
            FAIL("connect without a password succeeded");
        } catch (const connect_error& e) {
            CAPTURE(e.what());
            CHECK_FALSE(e.transient());
            CHECK(e.sqlstate().empty());
            CHECK(std::string(e.what()).find(right) == std::string::npos);
        }
    }
    SECTION("a wrong password: 28P01, not transient, no password in the message") {
        for (const auto& ci : {sbx().password_role(wrong), password_uri(wrong)}) {
            CAPTURE(ci);
            const libpq_connector c{ci};
            try {
                c.connect(in(10s));
                FAIL("connect with a wrong password succeeded");
            } catch (const connect_error& e) {
                const std::string msg = e.what();
                CAPTURE(msg);
                CHECK(e.sqlstate() == "28P01");
                CHECK_FALSE(e.transient());
                CHECK(msg.rfind("pqpool: cannot connect to ", 0) == 0);
                CHECK(msg.find(wrong) == std::string::npos);
                CHECK(msg.find(percent_encode(wrong)) == std::string::npos);
                CHECK(msg.find(right) == std::string::npos);
                CHECK(msg.find("LOCATION") == std::string::npos);
            }
        }
    }
}

TEST_CASE("libpq_connector: a closed port fails fast and is transient", "[integration][libpq]") {
    local_socket s{false};
    const int port = s.port;
    s.close();
    const libpq_connector c{local_conninfo(port)};
    const auto start = clock_type::now();
    try {
        c.connect(in(10s));
        FAIL("connect to a closed port succeeded");
    } catch (const connect_error& e) {
        CAPTURE(e.what());
        CHECK(e.transient());
        CHECK(e.sqlstate().empty());
        CHECK(std::string(e.what()).find("port=" + std::to_string(port)) != std::string::npos);
    }
    CHECK(clock_type::now() - start < 2s);
}

TEST_CASE("libpq_connector: a server that accepts TCP but never answers times out on time", "[integration][libpq]") {
    local_socket listener{true}; // listens, never accepts: the kernel completes the handshake, nobody answers

    SECTION("connect_timeout") {
        const libpq_connector c{local_conninfo(listener.port), libpq_options{.connect_timeout = 300ms}};
        const auto start = clock_type::now();
        CHECK_THROWS_AS(c.connect(in(60s)), connect_error);
        const auto took = clock_type::now() - start;
        CHECK(took >= 300ms);
        CHECK(took < 2s);
    }
    SECTION("the caller's deadline, when it comes first") {
        const libpq_connector c{local_conninfo(listener.port), libpq_options{.connect_timeout = 60s}};
        const auto start = clock_type::now();
        try {
            c.connect(start + 200ms);
            FAIL("connect to a silent server succeeded");
        } catch (const connect_error& e) {
            CAPTURE(e.what());
            CHECK(std::string(e.what()).find("timed out after") != std::string::npos);
            CHECK(e.transient());
            CHECK(e.sqlstate().empty());
        }
        const auto took = clock_type::now() - start;
        CHECK(took >= 200ms);
        CHECK(took < 2s);
    }
}

TEST_CASE("libpq_connector: a TLS verification failure is not transient", "[integration][libpq]") {
    // The sandbox's certificate names localhost and 127.0.0.1; reach the same
    // server under another name, with the right root: verify-full refuses.
    const libpq_connector c{"host=pqpool-wrong-name hostaddr=" + sbx().var("PQPOOL_TEST_HOST") +
                            " port=" + sbx().var("PQPOOL_TEST_PORT") + " dbname=" + sbx().var("PQPOOL_TEST_DBNAME") +
                            " user=" + sbx().var("PQPOOL_TEST_USER") +
                            " sslmode=verify-full sslrootcert=" + sbx().var("PQPOOL_TEST_SSLROOTCERT")};
    try {
        c.connect(in(10s));
        FAIL("verify-full accepted a certificate for another name");
    } catch (const connect_error& e) {
        CAPTURE(e.what());
        CHECK(std::string(e.what()).find("pqpool-wrong-name") != std::string::npos);
        CHECK(e.sqlstate().empty());
        CHECK_FALSE(e.transient());
    }
}

TEST_CASE("libpq_connector: an unknown database is 3D000 and not transient", "[integration][libpq]") {
    const libpq_connector c{plain_with_db("pqpool_no_such_database")};
    try {
        c.connect(in(10s));
        FAIL("connect to an unknown database succeeded");
    } catch (const connect_error& e) {
        CAPTURE(e.what());
        CHECK(e.sqlstate() == "3D000");
        CHECK_FALSE(e.transient());
    }
}

TEST_CASE("libpq_connector: too many connections is 53300 and transient", "[integration][libpq]") {
    // A role with CONNECTION LIMIT 0 gets the same 53300 as a full server,
    // without filling the server.
    admin_conn admin;
    const std::string role = "pqpool_limited_" + std::to_string(::getpid());
    if (!exec_ok(admin.c, "CREATE ROLE " + role + " LOGIN PASSWORD 'limited-pw' CONNECTION LIMIT 0")) {
        WARN("cannot create a role here (" << PQerrorMessage(admin.c) << "); 53300 not checked");
        return;
    }
    struct drop_role {
        PGconn* c;
        std::string role;
        ~drop_role() { exec_ok(c, "DROP ROLE IF EXISTS " + role); }
    } drop{admin.c, role};
    const libpq_connector c{"host=" + sbx().var("PQPOOL_TEST_HOST") + " port=" + sbx().var("PQPOOL_TEST_PORT") +
                            " dbname=" + sbx().var("PQPOOL_TEST_DBNAME") + " user=" + role +
                            " password=limited-pw sslmode=disable"};
    try {
        c.connect(in(10s));
        FAIL("connect beyond the role's connection limit succeeded");
    } catch (const connect_error& e) {
        CAPTURE(e.what());
        CHECK(e.sqlstate() == "53300");
        CHECK(e.transient());
        CHECK(std::string(e.what()).find("limited-pw") == std::string::npos);
    }
}

TEST_CASE("libpq_connector: setup statements run on every new connection", "[integration][libpq]") {
    libpq_options o;
    o.setup = {"SET search_path TO pg_catalog, public", "SET application_name = 'pqpool-test'"};
    const libpq_connector c{sbx().tls(), o};
    for (int i = 0; i < 2; ++i) {
        scoped h{c, c.connect(in(10s))};
        CHECK(query(h.h, "SHOW search_path") == "pg_catalog, public");
        CHECK(query(h.h, "SHOW application_name") == "pqpool-test");
        CHECK(PQtransactionStatus(h.h) == PQTRANS_IDLE);
    }
}

TEST_CASE("libpq_connector: a failing setup statement fails the connect, naming its index", "[integration][libpq]") {
    libpq_options o;
    o.setup = {"SET search_path TO public", "SET pqpool_no_such_setting = 1"};
    const libpq_connector c{sbx().plain(), o};
    try {
        c.connect(in(10s));
        FAIL("connect with a failing setup statement succeeded");
    } catch (const connect_error& e) {
        const std::string msg = e.what();
        CAPTURE(msg);
        CHECK(msg.find("setup[1]") != std::string::npos);
        CHECK(msg.find("pqpool_no_such_setting") != std::string::npos); // the server's message
        CHECK(e.sqlstate() == "42704");
        CHECK_FALSE(e.transient());
    }
}

TEST_CASE("libpq_connector: bad connection strings are config errors without the password", "[integration][libpq]") {
    const std::vector<std::string> bad = {
        "host=x password=hunter2 bogus",  "postgresql://u:hunter2@h:notaport/db",      "host=x hunter2",
        "postgresql://u:hunter2@[::1/db", "host=x password=hunter2 sslmode=sometimes",
    };
    for (const auto& ci : bad) {
        CAPTURE(ci);
        try {
            libpq_connector c{ci};
            FAIL("accepted: " << ci);
        } catch (const config_error& e) {
            CAPTURE(e.what());
            CHECK(std::string(e.what()).find("hunter2") == std::string::npos);
            CHECK(std::string(e.what()).rfind("pqpool: ", 0) == 0);
        }
    }
    SECTION("a missing sslrootcert file is named with its path") {
        const std::string path = "/nonexistent/pqpool/root.crt";
        try {
            libpq_connector c{"host=x password=hunter2 sslmode=verify-full sslrootcert=" + path};
            FAIL("accepted a missing sslrootcert");
        } catch (const config_error& e) {
            const std::string msg = e.what();
            CAPTURE(msg);
            CHECK(msg.find("sslrootcert") != std::string::npos);
            CHECK(msg.find(path) != std::string::npos);
            CHECK(msg.find("hunter2") == std::string::npos);
        }
    }
    SECTION("a directory given as sslcert is refused, and an existing file is accepted") {
        CHECK_THROWS_WITH((libpq_connector{"host=x sslmode=require sslcert=/tmp"}),
                          Catch::Contains("sslcert") && Catch::Contains("is a directory"));
        CHECK_NOTHROW(
            (libpq_connector{"host=x sslmode=verify-full sslrootcert=" + sbx().var("PQPOOL_TEST_SSLROOTCERT")}));
    }
    SECTION("the description never holds the password") {
        const libpq_connector c{"postgresql://u:hunter2@h:5433/db?sslmode=require"};
        CHECK(c.description() == "host=h port=5433 dbname=db user=u");
    }
}

TEST_CASE("libpq_connector: probe", "[integration][libpq]") {
    for (const auto& t : tls_and_plain()) {
        CAPTURE(t.name);
        const libpq_connector c{t.conninfo};

        SECTION(std::string("a fresh connection is alive: ") + t.name) {
            scoped h{c, c.connect(in(10s))};
            CHECK(c.probe(h.h));
            CHECK(query(h.h, "SELECT 1") == "1");
            CHECK(c.probe(h.h));
        }
        SECTION(std::string("a pending NOTIFY is not death, and stays for the application: ") + t.name) {
            scoped h{c, c.connect(in(10s))};
            REQUIRE(exec_ok(h.h, "LISTEN pqpool_probe"));
            admin_conn admin;
            REQUIRE(exec_ok(admin.c, "NOTIFY pqpool_probe, 'hello'"));
            pollfd p{PQsocket(h.h), POLLIN, 0};
            REQUIRE(::poll(&p, 1, 5000) == 1); // the notification is on the socket, unread
            CHECK(c.probe(h.h));
            PQconsumeInput(h.h);
            std::unique_ptr<PGnotify, decltype(&PQfreemem)> n{PQnotifies(h.h), &PQfreemem};
            REQUIRE(n != nullptr);
            CHECK(std::string(n->relname) == "pqpool_probe");
            CHECK(std::string(n->extra) == "hello");
            CHECK(c.probe(h.h));
        }
        SECTION(std::string("a terminated backend is dead: ") + t.name) {
            scoped h{c, c.connect(in(10s))};
            terminate_backend(h.h);
            const auto took = wait_until_probe_fails(c, h.h);
            CAPTURE(took.count());
            CHECK_FALSE(c.probe(h.h));
        }
        SECTION(std::string("inside a transaction it is not idle: ") + t.name) {
            scoped h{c, c.connect(in(10s))};
            REQUIRE(exec_ok(h.h, "BEGIN"));
            CHECK_FALSE(c.probe(h.h));
        }
    }
}

TEST_CASE("libpq_connector: ping", "[integration][libpq]") {
    for (const auto& t : tls_and_plain()) {
        CAPTURE(t.name);
        const libpq_connector c{t.conninfo};
        scoped h{c, c.connect(in(10s))};
        CHECK(c.ping(h.h, in(5s)));
        CHECK(c.ping(h.h, in(5s)));
        CHECK(PQtransactionStatus(h.h) == PQTRANS_IDLE);
        CHECK(query(h.h, "SELECT 2") == "2");

        // No time left: false, and nothing was sent, so the connection is still clean.
        CHECK_FALSE(c.ping(h.h, clock_type::now()));
        CHECK(c.ping(h.h, in(5s)));

        terminate_backend(h.h);
        const auto start = clock_type::now();
        CHECK_FALSE(c.ping(h.h, in(5s)));
        CHECK(clock_type::now() - start < 4s);
    }
}

TEST_CASE("libpq_connector: ping and reset never block past their deadlines", "[integration][libpq]") {
    // A path that goes silent without closing (a dropped NAT entry, a hung
    // proxy): nothing ever comes back, and no hang-up is ever seen.
    stall_proxy proxy{std::stoi(sbx().var("PQPOOL_TEST_PORT"))};
    libpq_options o;
    o.io_timeout = 300ms;
    const libpq_connector c{local_conninfo(proxy.port()), o};
    scoped h{c, c.connect(in(10s))};
    REQUIRE(c.ping(h.h, in(5s)));

    SECTION("ping") {
        proxy.stall();
        CHECK(c.probe(h.h)); // idle and quiet: looks alive locally, which is why ping exists
        const auto start = clock_type::now();
        CHECK_FALSE(c.ping(h.h, start + 200ms));
        const auto took = clock_type::now() - start;
        CHECK(took >= 200ms);
        CHECK(took < 1s);
    }
    SECTION("reset, bounded by io_timeout") {
        REQUIRE(exec_ok(h.h, "BEGIN"));
        proxy.stall();
        const auto start = clock_type::now();
        CHECK_FALSE(c.reset(h.h, false)); // the ROLLBACK is never answered
        const auto took = clock_type::now() - start;
        CHECK(took >= 300ms);
        CHECK(took < 2s);
    }
}

TEST_CASE("libpq_connector: reset", "[integration][libpq]") {
    const libpq_connector c{sbx().tls()};

    SECTION("idle: true without a round trip") {
        scoped h{c, c.connect(in(10s))};
        CHECK(c.reset(h.h, false));
        CHECK(PQtransactionStatus(h.h) == PQTRANS_IDLE);
    }
    SECTION("in a transaction: rolled back") {
        scoped h{c, c.connect(in(10s))};
        REQUIRE(exec_ok(h.h, "CREATE TEMP TABLE pqpool_reset_t (x int)"));
        REQUIRE(exec_ok(h.h, "BEGIN"));
        REQUIRE(exec_ok(h.h, "INSERT INTO pqpool_reset_t VALUES (1)"));
        REQUIRE(PQtransactionStatus(h.h) == PQTRANS_INTRANS);
        CHECK(c.reset(h.h, false));
        CHECK(PQtransactionStatus(h.h) == PQTRANS_IDLE);
        CHECK(query(h.h, "SELECT count(*) FROM pqpool_reset_t") == "0");
    }
    SECTION("in a failed transaction: rolled back") {
        scoped h{c, c.connect(in(10s))};
        REQUIRE(exec_ok(h.h, "BEGIN"));
        CHECK_FALSE(exec_ok(h.h, "SELECT 1/0"));
        REQUIRE(PQtransactionStatus(h.h) == PQTRANS_INERROR);
        CHECK(c.reset(h.h, false));
        CHECK(PQtransactionStatus(h.h) == PQTRANS_IDLE);
        CHECK(query(h.h, "SELECT 1") == "1");
    }
    SECTION("a command still running: false") {
        scoped h{c, c.connect(in(10s))};
        REQUIRE(PQsendQuery(h.h, "SELECT pg_sleep(10)"));
        REQUIRE(PQtransactionStatus(h.h) == PQTRANS_ACTIVE);
        const auto start = clock_type::now();
        CHECK_FALSE(c.reset(h.h, false));
        CHECK(clock_type::now() - start < 1s);
        std::unique_ptr<PGcancel, decltype(&PQfreeCancel)> cancel{PQgetCancel(h.h), &PQfreeCancel};
        char err[256];
        PQcancel(cancel.get(), err, sizeof err); // spare the server the 10 s
    }
    SECTION("discard_all: session state is gone") {
        scoped h{c, c.connect(in(10s))};
        REQUIRE(exec_ok(h.h, "CREATE TEMP TABLE pqpool_reset_d (x int)"));
        REQUIRE(exec_ok(h.h, "SET application_name = 'dirty'"));
        REQUIRE(exec_ok(h.h, "BEGIN"));
        CHECK(c.reset(h.h, true));
        CHECK(PQtransactionStatus(h.h) == PQTRANS_IDLE);
        CHECK(query(h.h, "SELECT to_regclass('pg_temp.pqpool_reset_d') IS NULL") == "t");
        CHECK(query(h.h, "SHOW application_name") != "dirty");
    }
    SECTION("a terminated backend: false") {
        scoped h{c, c.connect(in(10s))};
        REQUIRE(exec_ok(h.h, "BEGIN"));
        terminate_backend(h.h);
        CHECK_FALSE(c.reset(h.h, false));
    }
}

TEST_CASE("libpq_connector: abandon after fork leaves the parent's session intact", "[integration][libpq]") {
    for (const auto& t : tls_and_plain()) {
        CAPTURE(t.name);
        const libpq_connector c{t.conninfo};
        for (const bool polite : {false, true}) {
            CAPTURE(polite);
            PGconn* h = c.connect(in(10s));
            REQUIRE(query(h, "SELECT 1") == "1");
            REQUIRE(PQsslInUse(h) == t.ssl_in_use);
            std::fflush(nullptr); // nothing buffered for the child to print twice
            const pid_t pid = ::fork();
            REQUIRE(pid >= 0);
            if (pid == 0) {
                // The child: exit() runs atexit handlers and destructors, as a
                // real child process would.
                if (polite)
                    c.close(h); // the control case: PQfinish writes on the shared socket
                else
                    c.abandon(h);
                std::exit(0);
            }
            int status = 0;
            REQUIRE(::waitpid(pid, &status, 0) == pid);
            CHECK(WIFEXITED(status));
            CHECK(WEXITSTATUS(status) == 0);
            if (!polite) {
                // Not one byte reached the server: the session is as it was.
                CHECK(exec_ok(h, "SELECT 1"));
                CHECK(PQstatus(h) == CONNECTION_OK);
                CHECK(c.probe(h));
                CHECK(c.ping(h, in(5s)));
            } else {
                // The child's Terminate (and over TLS its close_notify) ended
                // the parent's session: proof this test can tell the difference.
                CHECK_FALSE(exec_ok(h, "SELECT 1"));
            }
            c.close(h);
        }
    }
}
