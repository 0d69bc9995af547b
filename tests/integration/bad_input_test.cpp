// Bad input, one test each, through the path a user takes (`pqpool::pool<>`, with
// counters to see the attempts; `libpq_connector` where the connector's own
// bound is what is tested). Each checks the exact exception type, a phrase of
// the message that names the problem, how fast it arrives, and that no piece
// of the password is in it. docs/bad-input.md, "Bad input and what you get",
// tables the results.
//
// Bounds. Construction errors arrive "at once" (no I/O; asserted < 500 ms,
// measured about 1 ms). Every conninfo that reaches a socket carries
// connect_timeout=2: a permanent failure is one attempt and arrives within
// that 2 s (+ margin); a transient one is retried within the retry budget
// (pool<>'s default: 5 attempts, backoff ceilings 100 + 200 + 400 + 800 ms),
// then `connect_error`, or `timeout_error` carrying the failure when the
// caller's wait ends first. The margin (500 ms) is for a shared 2-core machine
// and sanitizers.
//
// The unknown host is "db..invalid": glibc (2.36) refuses a name with an empty
// label before it asks any name server (checked with strace: no packet
// leaves), so the test makes no DNS traffic. A well-formed name such as
// "db.invalid" would be sent to the resolver in /etc/resolv.conf.

#include "connector_support.hpp"
#include "fault_proxy.hpp"
#include "password_role.hpp"

#include <pqpool/pqpool.hpp>

#include <libpq-fe.h>

#include <stdlib.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <utility>

using namespace std::chrono_literals;
using namespace pqpool;
using test::check_no_password;
using test::connector::exec_ok;
using test::connector::local_socket;
using test::connector::percent_encode;
using test::connector::sbx;

namespace {

using counted_pool = pool<observability::counters>; // pool<>'s defaults, and its attempts counted

constexpr std::chrono::milliseconds at_once{500};
constexpr std::chrono::milliseconds connect_timeout{2000}; // connect_timeout=2 below
constexpr std::chrono::milliseconds margin{500};
constexpr std::chrono::milliseconds backoff_ceilings{100 + 200 + 400 + 800}; // pool<>'s default retry budget

// Passwords built so that no 3-character piece of one occurs in the rest of
// a conninfo or in any message text: then every such piece in a message is a
// leak.
const std::string secret = "Qx7Vw-Kj9Zr-Hf2Tb";

// The sandbox's password role with `password`, over TLS, connect_timeout=2.
// A keyword given again later in the string overrides this one (libpq's rule).
std::string role_conninfo(const std::string& password) {
    return "host=" + sbx().var("PQPOOL_TEST_HOST") + " port=" + sbx().var("PQPOOL_TEST_PORT") +
           " dbname=" + sbx().var("PQPOOL_TEST_DBNAME") + " user=" + sbx().var("PQPOOL_TEST_PASSWORD_USER") +
           " password=" + password + " sslmode=require connect_timeout=2";
}

// The same as a URI; `password_as_written` goes in as it is (encode it first, or not).
std::string role_uri(const std::string& password_as_written, const std::string& port, const std::string& dbname) {
    return "postgresql://" + sbx().var("PQPOOL_TEST_PASSWORD_USER") + ":" + password_as_written + "@" +
           sbx().var("PQPOOL_TEST_HOST") + ":" + port + "/" + dbname + "?sslmode=require&connect_timeout=2";
}
std::string role_uri(const std::string& password_as_written) {
    return role_uri(password_as_written, sbx().var("PQPOOL_TEST_PORT"), sbx().var("PQPOOL_TEST_DBNAME"));
}

bool has(const std::string& text, const std::string& phrase) { return text.find(phrase) != std::string::npos; }

template <class E>
struct thrown {
    E error;
    std::chrono::milliseconds took;
    std::string what() const { return error.what(); }
};

// Runs `f`, which must throw exactly E: not another pqpool::error, not
// something derived from E, not nothing.
template <class E, class F>
thrown<E> expect(F&& f) {
    const auto start = std::chrono::steady_clock::now();
    try {
        f();
    } catch (const error& e) {
        const auto took =
            std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
        INFO("threw " << typeid(e).name() << " after " << took.count() << " ms: " << e.what());
        REQUIRE(typeid(e) == typeid(E));
        return {static_cast<const E&>(e), took};
    }
    FAIL("no exception: expected " << typeid(E).name());
    throw std::logic_error("unreachable");
}

// A construction error: the pool's constructor throws config_error at once.
thrown<config_error> refused_at_construction(const std::string& conninfo) {
    CAPTURE(conninfo);
    auto t = expect<config_error>([&] { counted_pool p{conninfo}; });
    CHECK(t.took < at_once);
    return t;
}

// A permanent connect failure: acquire() throws connect_error after one
// attempt (no retry), within one connect timeout, and the pool is left empty.
thrown<connect_error> permanent(const std::string& conninfo) {
    CAPTURE(conninfo);
    counted_pool p{conninfo};
    auto t = expect<connect_error>([&] { p.acquire(); });
    CHECK_FALSE(t.error.transient());
    CHECK(t.took < connect_timeout + margin);
    CHECK(p.observer().count(event::connect_failed) == 1);
    CHECK(p.observer().count(event::retry) == 0);
    CHECK(p.stats() == pool_stats{});
    check_no_password(t.what(), secret, conninfo);
    return t;
}

// A transient connect failure: acquire() retries it for the whole default
// budget (5 attempts) and then throws connect_error; each attempt costs at most
// `per_attempt`, and the backoff at most its ceilings.
thrown<connect_error> transient(const std::string& conninfo, std::chrono::milliseconds per_attempt) {
    CAPTURE(conninfo);
    counted_pool p{conninfo};
    auto t = expect<connect_error>([&] { p.acquire(); });
    CHECK(t.error.transient());
    CHECK(t.took < 5 * per_attempt + backoff_ceilings + margin);
    CHECK(p.observer().count(event::connect_failed) == 5);
    CHECK(p.observer().count(event::retry) == 4);
    CHECK(p.stats() == pool_stats{});
    check_no_password(t.what(), secret, conninfo);
    return t;
}

// The same failure when the caller's wait (300 ms) ends before a budget
// longer than it (50 attempts): timeout_error, carrying the last failure.
thrown<timeout_error> transient_past_the_wait(const std::string& conninfo) {
    CAPTURE(conninfo);
    counted_pool p{conninfo, retry::exponential_backoff{.attempts = 50}};
    auto t = expect<timeout_error>([&] { p.acquire_for(300ms); });
    CHECK(t.took >= 300ms);
    CHECK(t.took < 300ms + margin);
    CHECK(p.observer().count(event::connect_failed) >= 1);
    REQUIRE(t.error.last_connect_error() != nullptr);
    CHECK(t.error.last_connect_error()->transient());
    CHECK(has(t.what(), "connecting is failing"));
    check_no_password(t.what(), secret, conninfo);
    return t;
}

// A root certificate of a CA that signed nothing the sandbox uses, made with
// openssl in a temporary directory (removed at scope exit).
struct other_root {
    std::string dir, cert;
    other_root() {
        char tmpl[] = "/tmp/pqpool-other-ca.XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        dir = tmpl;
        cert = dir + "/root.crt";
        const std::string cmd = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
                                "-subj /CN=pqpool-other-ca -keyout '" +
                                dir + "/root.key' -out '" + cert + "' >/dev/null 2>&1";
        REQUIRE(std::system(cmd.c_str()) == 0);
    }
    ~other_root() { (void)std::system(("rm -rf '" + dir + "'").c_str()); }
    other_root(const other_root&) = delete;
    other_root& operator=(const other_root&) = delete;
};

} // namespace

// --- Malformed conninfo and URI: config_error from the constructor, at once.

TEST_CASE("bad input: conninfo with an unterminated quote", "[integration][bad_input]") {
    const std::string conninfo = role_conninfo("'" + secret);
    const auto t = refused_at_construction(conninfo);
    CHECK(has(t.what(), "pqpool: invalid connection string: unterminated quoted string"));
    check_no_password(t.what(), secret, conninfo);
}

TEST_CASE("bad input: conninfo with a missing '='", "[integration][bad_input]") {
    SECTION("after a keyword") {
        const std::string conninfo = role_conninfo(secret) + " sslmode require";
        const auto t = refused_at_construction(conninfo);
        CHECK(has(t.what(), "pqpool: invalid connection string: missing \"=\" after \"sslmode\""));
        check_no_password(t.what(), secret, conninfo);
    }
    SECTION("a password written without its keyword: libpq quotes it, the message does not") {
        const std::string conninfo = role_conninfo("x") + " " + secret;
        const auto t = refused_at_construction(conninfo);
        CHECK(has(t.what(), "missing \"=\" after \"***\""));
        check_no_password(t.what(), secret, conninfo);
    }
}

TEST_CASE("bad input: conninfo or URI with an unknown keyword", "[integration][bad_input]") {
    // The keyword is not named: libpq quotes the word it read as a keyword,
    // which can be a piece of a password that holds a space (password=a b=c).
    for (const std::string& conninfo :
         {role_conninfo(secret) + " sslmdoe=require", role_uri(secret) + "&sslmdoe=require"}) {
        const auto t = refused_at_construction(conninfo);
        CHECK((has(t.what(), "invalid connection option \"***\"") ||
               has(t.what(), "invalid URI query parameter: \"***\"")));
        check_no_password(t.what(), secret, conninfo);
    }
}

TEST_CASE("bad input: URI with bad percent-encoding", "[integration][bad_input]") {
    const std::string in_password = "Qx7Vw%zzKj9Zr-Hf2Tb";
    for (const auto& [conninfo, password] :
         {std::pair{role_uri(in_password), in_password},
          std::pair{role_uri(percent_encode(secret), sbx().var("PQPOOL_TEST_PORT"), "pqpool%4"), secret}}) {
        const auto t = refused_at_construction(conninfo);
        CHECK(has(t.what(), "pqpool: invalid connection string: invalid percent-encoded token: \"***\""));
        check_no_password(t.what(), password, conninfo);
    }
}

TEST_CASE("bad input: URI with an unencoded '@' or '/' in the password", "[integration][bad_input]") {
    for (const std::string password : {"Qx7Vw@Kj9Zr-Hf2Tb", "Qx7Vw/Kj9Zr-Hf2Tb"}) {
        const std::string conninfo = role_uri(password);
        const auto t = refused_at_construction(conninfo);
        CHECK(has(t.what(), "the URI's password contains a character that must be percent-encoded"));
        check_no_password(t.what(), password, conninfo);
    }
}

TEST_CASE("bad input: URI with a bad port", "[integration][bad_input]") {
    for (const std::string port : {"99999", "54x2", "0"}) {
        const std::string conninfo = role_uri(percent_encode(secret), port, sbx().var("PQPOOL_TEST_DBNAME"));
        const auto t = refused_at_construction(conninfo);
        CHECK(
            has(t.what(), "pqpool: connection string: port is \"" + port + "\"; it must be a number from 1 to 65535"));
        check_no_password(t.what(), secret, conninfo);
    }
}

// --- Servers that cannot be reached or refuse: connect_error from acquire().

TEST_CASE("bad input: unknown host, permanent", "[integration][bad_input]") {
    const auto t = permanent(role_conninfo(secret) + " host=db..invalid");
    CHECK(has(t.what(), "could not translate host name \"db..invalid\" to address"));
    CHECK(t.error.sqlstate().empty());
}

TEST_CASE("bad input: closed port, retried for the budget", "[integration][bad_input]") {
    local_socket closed{false}; // bound, so no one else takes the port, and not listening
    const std::string conninfo = role_conninfo(secret) + " port=" + std::to_string(closed.port);
    SECTION("the budget ends first: connect_error") {
        const auto t = transient(conninfo, 100ms); // a refusal costs no wait
        CHECK(has(t.what(), "Connection refused"));
        CHECK(t.error.sqlstate().empty());
    }
    SECTION("the caller's wait ends first: timeout_error carrying the refusal") {
        const auto t = transient_past_the_wait(conninfo);
        CHECK(has(t.error.last_connect_error()->what(), "Connection refused"));
    }
}

TEST_CASE("bad input: wrong password (28P01), permanent", "[integration][bad_input]") {
    const auto t = permanent(role_conninfo(secret)); // the role keeps the sandbox's password
    CHECK(t.error.sqlstate() == "28P01");
    CHECK(has(t.what(), "password authentication failed for user \"" + sbx().var("PQPOOL_TEST_PASSWORD_USER") + "\""));
}

TEST_CASE("bad input: unknown database (3D000), permanent", "[integration][bad_input]") {
    test::role_for_test role{secret}; // the right password: the server checks it before the database
    const auto t = permanent(role_conninfo(secret) + " dbname=pqpool_no_such_db");
    CHECK(t.error.sqlstate() == "3D000");
    CHECK(has(t.what(), "database \"pqpool_no_such_db\" does not exist"));
}

TEST_CASE("bad input: sslmode=verify-full with the wrong host name, permanent", "[integration][bad_input]") {
    // The certificate names localhost and 127.0.0.1; hostaddr spares a DNS lookup.
    const auto t =
        permanent(role_conninfo(secret) + " host=wrong.example hostaddr=127.0.0.1 sslmode=verify-full sslrootcert=" +
                  sbx().var("PQPOOL_TEST_SSLROOTCERT"));
    CHECK(has(t.what(), "does not match host name \"wrong.example\""));
    CHECK(t.error.sqlstate().empty());
}

TEST_CASE("bad input: sslmode=verify-full with the wrong root certificate, permanent", "[integration][bad_input]") {
    other_root root;
    const auto t = permanent(role_conninfo(secret) +
                             " host=localhost hostaddr=127.0.0.1 sslmode=verify-full sslrootcert=" + root.cert);
    CHECK(has(t.what(), "certificate verify failed"));
    CHECK(t.error.sqlstate().empty());
}

TEST_CASE("bad input: server full (53300), retried for the budget", "[integration][bad_input]") {
    // A role at its CONNECTION LIMIT answers 53300 as a server at
    // max_connections does ("too many connections for role" instead of
    // "sorry, too many clients already"), after authentication.
    test::role_for_test role{secret, 1};
    const std::string conninfo = role_conninfo(secret);
    const std::unique_ptr<PGconn, decltype(&PQfinish)> hog{PQconnectdb(conninfo.c_str()), &PQfinish};
    REQUIRE(PQstatus(hog.get()) == CONNECTION_OK);
    SECTION("the budget ends first: connect_error") {
        const auto t = transient(conninfo, 100ms); // a TLS and SCRAM handshake: about 30 ms here
        CHECK(t.error.sqlstate() == "53300");
        CHECK(has(t.what(), "too many connections for role \"" + sbx().var("PQPOOL_TEST_PASSWORD_USER") + "\""));
    }
    SECTION("the caller's wait ends first: timeout_error carrying 53300") {
        const auto t = transient_past_the_wait(conninfo);
        CHECK(t.error.last_connect_error()->sqlstate() == "53300");
    }
}

TEST_CASE("bad input: a listener that accepts and never answers", "[integration][bad_input]") {
    test::fault_proxy proxy{std::stoi(sbx().var("PQPOOL_TEST_PORT"))};
    proxy.blackhole();
    const std::string conninfo = proxy.route(role_conninfo(secret));
    SECTION("the connector: one connect timeout, then a transient connect_error") {
        const libpq_connector c{conninfo};
        const auto t = expect<connect_error>([&] { c.close(c.connect(std::chrono::steady_clock::now() + 30s)); });
        CHECK(t.took >= connect_timeout - 50ms);
        CHECK(t.took < connect_timeout + margin);
        CHECK(t.error.transient());
        CHECK(t.error.sqlstate().empty());
        CHECK(has(t.what(), "timed out after 2000 ms"));
        check_no_password(t.what(), secret, conninfo);
    }
    SECTION("the pool: timeout_error at the caller's wait, carrying the timeout once there was one") {
        counted_pool p{conninfo};
        // Shorter than the connect timeout: nothing failed yet, the connect is parked.
        const auto early = expect<timeout_error>([&] { p.acquire_for(1s); });
        CHECK(early.took < 1s + margin);
        CHECK(early.error.last_connect_error() == nullptr);
        CHECK(has(early.what(), "1 opening"));
        CHECK(has(early.what(), "its connect has had no answer for")); // a silent server says so
        check_no_password(early.what(), secret, conninfo);
        // The parked connect goes on; its host's 2 s end 1 s into this wait,
        // the retry starts, and this wait ends first.
        const auto late = expect<timeout_error>([&] { p.acquire_for(2s); });
        CHECK(late.took >= 2s);
        CHECK(late.took < 2s + margin);
        CHECK(p.observer().count(event::connect_failed) == 1);
        CHECK(p.observer().count(event::retry) == 1);
        REQUIRE(late.error.last_connect_error() != nullptr);
        CHECK(late.error.last_connect_error()->transient());
        CHECK(has(late.what(), "connecting is failing: cannot connect to "));
        CHECK(has(late.what(), "timed out after 2000 ms"));
        check_no_password(late.what(), secret, conninfo);
    }
}

// --- Nonsense policy numbers: config_error from the constructor, at once.

TEST_CASE("bad input: nonsense policy numbers", "[integration][bad_input]") {
    const std::string conninfo = role_conninfo(secret);
    auto refused = [&](auto&&... policies) {
        auto t = expect<config_error>([&] { counted_pool p{conninfo, policies...}; });
        CHECK(t.took < at_once);
        check_no_password(t.what(), secret, conninfo);
        return t.what();
    };
    CHECK(refused(overflow::bounded{.size = 0, .max_overflow = 0}) ==
          "pqpool: overflow::bounded: size + max_overflow is 0 + 0; it must be between 1 and SIZE_MAX");
    CHECK(refused(overflow::bounded{.wait = -5ms}) ==
          "pqpool: overflow::bounded: wait is -5 ms; it must be 0 (never wait) or more (milliseconds::max() means no "
          "limit)");
    CHECK(refused(retry::exponential_backoff{.attempts = 0}) ==
          "pqpool: retry::exponential_backoff: attempts is 0; it must be at least 1");
    const auto t = expect<config_error>([&] { counted_pool p{libpq_connector{conninfo, {.io_timeout = 0ms}}}; });
    CHECK(t.what() == "pqpool: libpq_options: io_timeout is 0 ms; it must be at least 1 ms (milliseconds::max() means "
                      "no limit)");
}
