// The connector's pure parts, without a server: the per-host plan (one libpq
// connection per host, target_session_attrs passes, TCP defaults), the
// resolved connect timeout, libpq's keyword lists, whole-token scrubbing, the
// fork gate's mechanics, and the bound on cancels in flight.

#include "catch.hpp"
#include "sockets.hpp"

#include <pqpool/connector/libpq.hpp>
#include <pqpool/detail/conninfo.hpp>
#include <pqpool/detail/connect_failure.hpp>
#include <pqpool/detail/connection_watch.hpp>
#include <pqpool/detail/fork_gate.hpp>
#include <pqpool/detail/libpq_io.hpp>
#include <pqpool/detail/redact.hpp>

#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using pqpool::config_error;
using pqpool::libpq_connector;
using pqpool::libpq_options;
namespace detail = pqpool::detail;

namespace {

// The plan for `conninfo` with an empty environment.
std::vector<detail::connect_target> plan(const std::string& conninfo, const detail::libpq_defaults& env = {}) {
    const detail::parsed_conninfo ci = detail::parse_conninfo(conninfo);
    detail::check_conninfo(ci);
    return detail::plan_connects(ci, env);
}

// A keyword's value in one target, or "(none)".
std::string value(const detail::connect_target& t, const std::string& keyword) {
    for (std::size_t i = 0; i < t.keywords.size(); ++i)
        if (t.keywords[i] == keyword) return t.values[i];
    return "(none)";
}

} // namespace

TEST_CASE("conninfo: several hosts become one libpq connection each", "[unit][libpq]") {
    SECTION("a port per host") {
        const auto p = plan("host=a,b port=5001,5002 dbname=app");
        REQUIRE(p.size() == 2);
        CHECK(value(p[0], "host") == "a");
        CHECK(value(p[0], "port") == "5001");
        CHECK(value(p[1], "host") == "b");
        CHECK(value(p[1], "port") == "5002");
        CHECK(value(p[1], "dbname") == "app");
        CHECK(p[0].label == "a:5001");
        CHECK(p[1].label == "b:5002");
    }
    SECTION("one port for all, host names with addresses") {
        const auto p = plan("host=a,b hostaddr=127.0.0.1,::1 port=6000");
        REQUIRE(p.size() == 2);
        CHECK(value(p[1], "host") == "b");
        CHECK(value(p[1], "hostaddr") == "::1");
        CHECK(value(p[1], "port") == "6000");
        CHECK(p[0].label == "a (127.0.0.1):6000");
    }
    SECTION("target_session_attrs goes to each; prefer-standby is two passes") {
        auto p = plan("host=a,b target_session_attrs=read-write");
        REQUIRE(p.size() == 2);
        CHECK(value(p[0], "target_session_attrs") == "read-write");
        p = plan("host=a,b target_session_attrs=prefer-standby");
        REQUIRE(p.size() == 4);
        CHECK(value(p[0], "target_session_attrs") == "standby");
        CHECK(value(p[1], "target_session_attrs") == "standby");
        CHECK(value(p[2], "target_session_attrs") == "any");
        CHECK(value(p[3], "host") == "b");
    }
    SECTION("hosts from the environment (PGHOST) are split too") {
        detail::libpq_defaults env;
        env.values = {{"host", "x,y"}, {"port", "5432"}};
        const auto p = plan("dbname=app", env);
        REQUIRE(p.size() == 2);
        CHECK(value(p[1], "host") == "y");
    }
    SECTION("one host: libpq gets the connection string as it is") {
        const auto p = plan("host=a target_session_attrs=prefer-standby");
        REQUIRE(p.size() == 1);
        CHECK(value(p[0], "target_session_attrs") == "prefer-standby");
    }
}

TEST_CASE("conninfo: TCP keepalives and a user timeout unless the user chose", "[unit][libpq]") {
    auto p = plan("host=a");
    CHECK(value(p[0], "keepalives") == "1");
    CHECK(value(p[0], "keepalives_idle") == "30");
    CHECK(value(p[0], "keepalives_interval") == "10");
    CHECK(value(p[0], "keepalives_count") == "3");
    CHECK(value(p[0], "tcp_user_timeout") == "30000");

    p = plan("host=a,b keepalives_idle=77 tcp_user_timeout=0");
    for (const auto& t : p) {
        CHECK(value(t, "keepalives_idle") == "77");
        CHECK(value(t, "tcp_user_timeout") == "0");
        CHECK(value(t, "keepalives_count") == "3");
    }
    // A service file decides everything it sets: no defaults, no split.
    p = plan("service=pqpool_test_service host=a,b");
    REQUIRE(p.size() == 1);
    CHECK(value(p[0], "keepalives") == "(none)");
}

TEST_CASE("conninfo: the connect timeout per host", "[unit][libpq]") {
    auto timeout = [](const std::string& ci, libpq_options o = {}) {
        return libpq_connector{ci, std::move(o)}.connect_timeout();
    };
    constexpr auto forever = std::chrono::milliseconds::max();
    CHECK(timeout("host=a") == 10s);
    CHECK(timeout("host=a connect_timeout=5") == 5s);
    CHECK(timeout("host=a connect_timeout=1") == 2s); // libpq's minimum
    CHECK(timeout("host=a connect_timeout=0") == forever);
    CHECK(timeout("host=a connect_timeout=-3") == forever);
    CHECK(timeout("host=a", {.connect_timeout = 1500ms}) == 1500ms);
    CHECK(timeout("host=a connect_timeout=5", {.connect_timeout = 5s}) == 5s);
    CHECK(timeout("host=a connect_timeout=0", {.connect_timeout = forever}) == forever);
    try {
        timeout("host=a connect_timeout=5", {.connect_timeout = 3s});
        FAIL("a disagreement was accepted");
    } catch (const config_error& e) {
        const std::string msg = e.what();
        CAPTURE(msg);
        CHECK(msg.find("connect_timeout=5") != std::string::npos);
        CHECK(msg.find("libpq_options::connect_timeout (3000 ms)") != std::string::npos);
    }
    CHECK_THROWS_AS((libpq_connector{"host=a", {.cancel_timeout = 0ms}}), config_error);

    detail::libpq_defaults env;
    env.values = {{"connect_timeout", "4"}};
    const auto ci = detail::parse_conninfo("host=a");
    CHECK(detail::resolve_connect_timeout(ci, env, std::nullopt) == 4s); // PGCONNECT_TIMEOUT
    CHECK(detail::resolve_connect_timeout(ci, env, 1s) == 1s);
    env.values = {{"connect_timeout", "soon"}};
    CHECK_THROWS_AS(detail::resolve_connect_timeout(ci, env, std::nullopt), config_error);
}

TEST_CASE("conninfo: libpq's keywords and secret keywords come from libpq", "[unit][libpq]") {
    const auto& v = detail::libpq_vocabulary();
    CHECK(v.is_keyword("target_session_attrs"));
    CHECK(v.is_keyword("tcp_user_timeout"));
    CHECK(v.is_secret("password"));
    CHECK(v.is_secret("sslpassword"));
    CHECK_FALSE(v.is_secret("user"));
    // Exactly libpq's table, as PQconndefaults() gives it (its dispchar "*"
    // marks the secrets): taken from PQconninfoParse(""), which returns the
    // same table without reading the environment or a service file, so it
    // cannot fail on a broken PGSERVICE the way PQconndefaults() does.
    std::vector<std::string> keywords, secrets;
    const detail::conninfo_options defaults{PQconndefaults()};
    REQUIRE(defaults);
    for (const PQconninfoOption* o = defaults.get(); o->keyword; ++o) {
        keywords.emplace_back(o->keyword);
        if (o->dispchar && o->dispchar[0] == '*') secrets.emplace_back(o->keyword);
    }
    CHECK(v.keywords == keywords);
    CHECK(v.secret_keywords == secrets);
    // The raw scanner finds a secret keyword libpq knows, in input libpq refuses.
    const auto found = detail::find_secrets("host=x sslpassword=Zq9-keypass bogus", v);
    CHECK(std::find(found.begin(), found.end(), "Zq9-keypass") != found.end());
}

TEST_CASE("redact: a secret is scrubbed only as a whole token", "[unit][libpq]") {
    std::string text = "pqpool: cannot connect to dbname=pqpool: FATAL: pool is \"pool\" (pool_x) pool";
    detail::scrub_token(text, "pool");
    CHECK(text == "pqpool: cannot connect to dbname=pqpool: FATAL: *** is \"***\" (pool_x) ***");

    text = "a-b+c d a-b+cd xa-b+c";
    detail::scrub_token(text, "a-b+c");
    CHECK(text == "*** d a-b+cd xa-b+c");

    text = "x/y@z and q/x/y@z/";
    detail::scrub_token(text, "/y@z");
    CHECK(text == "x*** and q/x***/");
}

TEST_CASE("fork gate: fork() waits for a connect step in flight, and the child may take the gate", "[unit][libpq]") {
    detail::fork_gate::install();
    std::atomic<bool> inside{false}, forked{false};
    std::thread step([&] {
        {
            detail::fork_gate::step gate;
            inside = true;
            std::this_thread::sleep_for(300ms);
        }
        // Still running at the fork: a thread that had finished unjoined would be reported by
        // ThreadSanitizer in the child as a thread leak (its exit code then fails the test).
        while (!forked) std::this_thread::yield();
    });
    while (!inside) std::this_thread::yield();
    const auto start = std::chrono::steady_clock::now();
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid > 0) forked = true;
    if (pid == 0) {
        ::alarm(10);                      // a child that hangs dies of SIGALRM, and the test fails
        { detail::fork_gate::step gate; } // would hang if the child inherited a held gate
        ::_exit(0);
    }
    const auto waited = std::chrono::steady_clock::now() - start;
    step.join();
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CAPTURE(std::chrono::duration_cast<std::chrono::milliseconds>(waited).count());
    CHECK(waited >= 200ms);
    // And the parent's gate is open again.
    detail::fork_gate::step gate;
}

namespace {

// Aborts the test program (a loud failure) unless disarmed within `limit`:
// for code whose failure is a deadlock.
class watchdog {
public:
    explicit watchdog(std::chrono::seconds limit)
        : thread_([this, limit] {
              std::unique_lock lock(m_);
              if (!cv_.wait_for(lock, limit, [&] { return done_; })) {
                  std::fputs("watchdog: deadlocked\n", stderr);
                  std::abort();
              }
          }) {}
    ~watchdog() {
        {
            const std::lock_guard lock(m_);
            done_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }

private:
    std::mutex m_;
    std::condition_variable cv_;
    bool done_ = false;
    std::thread thread_;
};

int wait_child(pid_t pid) {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    return WEXITSTATUS(status);
}

} // namespace

TEST_CASE("fork gate: steps nest, and a thread inside one may fork, even while another thread forks", "[unit][libpq]") {
    detail::fork_gate::install();
    const watchdog dog{20s};
    {
        // A credentials callable (a step) that signs an RDS token (a nested step) and runs a
        // program (fork) from inside both.
        detail::fork_gate::step outer;
        detail::fork_gate::step inner;
        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) ::_exit(0);
        CHECK(wait_child(pid) == 0);
    }
    // Thread A is inside a step when thread B forks (B's fork waits for A's step), and then A
    // forks too, from inside its step: neither waits for the other forever.
    std::atomic<bool> inside{false}, b_forked{false};
    pid_t a_child = -1, b_child = -1;
    std::thread a([&] {
        detail::fork_gate::step gate;
        inside = true;
        std::this_thread::sleep_for(200ms); // B is in its fork's prepare handler by now, waiting for this step
        a_child = ::fork();
        if (a_child == 0) ::_exit(0);
        while (!b_forked) std::this_thread::yield(); // alive at B's fork (see the test above)
    });
    while (!inside) std::this_thread::yield();
    b_child = ::fork();
    if (b_child == 0) ::_exit(0);
    b_forked = true;
    a.join();
    REQUIRE(a_child > 0);
    REQUIRE(b_child > 0);
    CHECK(wait_child(a_child) == 0);
    CHECK(wait_child(b_child) == 0);
    detail::fork_gate::step after; // and the gate is open again
}

TEST_CASE("connect_failure: a failed connect's message, SQLSTATE and transience", "[unit][libpq]") {
    const std::string fatal = "connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  28P01: password "
                              "authentication failed for user \"app\"\nLOCATION:  auth_failed, auth.c:335\n";
    auto f = detail::parse_connect_failure(fatal, false);
    CHECK(f.sqlstate == "28P01");
    CHECK_FALSE(f.transient);
    CHECK(f.text.find("LOCATION") == std::string::npos);
    CHECK(f.text.back() == '"');

    f = detail::parse_connect_failure("FATAL:  57P03: the database system is starting up\n", false);
    CHECK(f.sqlstate == "57P03");
    CHECK(f.transient);

    f = detail::parse_connect_failure("connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n"
                                      "\tIs the server running on that host and accepting TCP/IP connections?\n",
                                      false);
    CHECK(f.sqlstate.empty());
    CHECK(f.transient);

    // A server that asked for a password none was given for: no retry cures it.
    f = detail::parse_connect_failure("fe_sendauth: no password supplied\n", true);
    CHECK_FALSE(f.transient);

    f = detail::parse_connect_failure("", false);
    CHECK(f.text == "unknown error (libpq gave no message)");

    CHECK(detail::without_server_prefix("connection to server at \"h\" (10.0.0.1), port 5432 failed: FATAL:  x") ==
          "FATAL:  x");
    CHECK(detail::without_server_prefix("timed out after 2000 ms") == "timed out after 2000 ms");
}

TEST_CASE("connect_failure: which errors on an open connection say its server went away or changed role",
          "[unit][libpq][epoch]") {
    using detail::wanted_role;
    // The server's last word to this session: it is going away.
    for (const char* code : {"08000", "08003", "08006", "08P01", "57P01", "57P02", "57P03"}) {
        CAPTURE(code);
        CHECK(detail::server_gone(code, "FATAL"));
        // As an ERROR the session goes on: about another server (dblink's 08001), not this one.
        CHECK_FALSE(detail::server_gone(code, "ERROR"));
        CHECK_FALSE(detail::server_gone(code, ""));
    }
    CHECK_FALSE(detail::server_gone("08001", "ERROR")); // dblink_connect to an unreachable remote
    CHECK(detail::server_gone("XX000", "PANIC"));       // the whole server goes down
    // Other FATALs end this session only: an idle session timeout, an idle transaction's timeout.
    for (const char* code : {"57P05", "25P03", "53300", "22012", "23505", "40001", "", "08"}) {
        CAPTURE(code);
        CHECK_FALSE(detail::server_gone(code, "FATAL"));
    }
    // A read-only transaction: only a suspicion, and only when the pool asked for read-write servers.
    CHECK(detail::read_only_suspected("25006", wanted_role::read_write));
    CHECK_FALSE(detail::read_only_suspected("25P03", wanted_role::read_write));
    for (auto role : {wanted_role::any, wanted_role::primary, wanted_role::read_only, wanted_role::standby,
                      wanted_role::prefer_standby})
        CHECK_FALSE(detail::read_only_suspected("25006", role));

    CHECK(detail::wanted_role_of("read-write") == wanted_role::read_write);
    CHECK(detail::wanted_role_of("prefer-standby") == wanted_role::prefer_standby);
    CHECK(detail::wanted_role_of("any") == wanted_role::any);
    CHECK(detail::wanted_role_of("") == wanted_role::any);

    // A server's state (in hot standby; read-only by default), as libpq's own check reads it.
    CHECK(detail::role_lost(wanted_role::read_write, true, false, false)); // demoted to a standby
    CHECK(detail::role_lost(wanted_role::read_write, false, true, false)); // fenced read-only
    CHECK_FALSE(detail::role_lost(wanted_role::read_write, false, false, false));
    CHECK(detail::role_lost(wanted_role::primary, true, false, false));
    CHECK_FALSE(detail::role_lost(wanted_role::primary, false, true, false)); // read-only, but still a primary
    CHECK(detail::role_lost(wanted_role::standby, false, false, true));       // promoted
    CHECK_FALSE(detail::role_lost(wanted_role::standby, true, true, true));
    CHECK(detail::role_lost(wanted_role::read_only, false, false, false));
    CHECK_FALSE(detail::role_lost(wanted_role::read_only, false, true, false));
    CHECK(detail::role_lost(wanted_role::prefer_standby, false, false, true));        // its standby was promoted
    CHECK_FALSE(detail::role_lost(wanted_role::prefer_standby, false, false, false)); // fell back to a primary
    CHECK_FALSE(detail::role_lost(wanted_role::any, true, true, true));
}

TEST_CASE("connection watch: only evidence about the pool's own server moves the epoch, and what the session may "
          "have done itself is a suspicion, confirmed with the server",
          "[unit][libpq][epoch]") {
    using detail::wanted_role;
    std::atomic<std::uint64_t> epoch{0};
    auto watch = [&](wanted_role role, bool standby = false) {
        auto b = std::make_shared<detail::epoch_binding>();
        b->role = role;
        b->epoch.store(&epoch);
        detail::connection_watch w;
        w.binding = std::move(b);
        w.born = epoch.load();
        w.was_standby = w.standby_seen = standby;
        return w;
    };
    SECTION("a FATAL 57P01 moves it; dblink's ERROR 08001 and an idle session's FATAL 57P05 do not") {
        auto w = watch(wanted_role::any);
        w.saw_error("08001", "ERROR");
        w.saw_error("57P05", "FATAL");
        CHECK(epoch == 0);
        CHECK(w.fatal_seen);
        w.saw_error("57P01", "FATAL");
        CHECK(epoch == 1);
        w.saw_loss(); // the close after the FATAL: judged by the FATAL already
        CHECK(epoch == 1);
    }
    SECTION("a connection lost without a word moves it") {
        auto w = watch(wanted_role::any);
        w.saw_loss();
        CHECK(epoch == 1);
    }
    SECTION("a 25006 on a read-write pool is a suspicion; the server's answer decides") {
        auto w = watch(wanted_role::read_write);
        w.saw_error("25006", "ERROR");
        CHECK(w.suspect);
        CHECK(epoch == 0);
        CHECK_FALSE(w.confirm(false, false)); // the application's own BEGIN READ ONLY
        CHECK_FALSE(w.suspect);
        CHECK(epoch == 0);
        w.saw_error("25006", "ERROR");
        CHECK(w.confirm(false, true)); // the server is read-only for every new session: fenced
        CHECK(epoch == 1);
    }
    SECTION("a reported default_transaction_read_only is a suspicion, once per change; in_hot_standby is the "
            "server's own") {
        auto w = watch(wanted_role::read_write);
        w.saw_role("off", "on"); // SET default_transaction_read_only = on, or a reload: cannot tell
        CHECK(w.suspect);
        CHECK(epoch == 0);
        CHECK_FALSE(w.confirm(false, false));
        w.saw_role("off", "on"); // the same value again: nothing new
        CHECK_FALSE(w.suspect);
        w.saw_role("off", "off");
        CHECK_FALSE(w.suspect);
        auto s = watch(wanted_role::standby, true);
        s.saw_role("on", "off");
        CHECK(epoch == 0);
        s.saw_role("off", "off"); // promoted: no session can do that
        CHECK(epoch == 1);
        CHECK_FALSE(s.suspect);
        auto old = watch(wanted_role::read_write);
        old.saw_role(nullptr, nullptr); // a server before 14 reports neither
        CHECK_FALSE(old.suspect);
    }
    SECTION("a pool that asked for any server suspects nothing") {
        auto w = watch(wanted_role::any);
        w.saw_error("25006", "ERROR");
        w.saw_role("off", "on");
        CHECK_FALSE(w.suspect);
        CHECK(epoch == 0);
    }
}

TEST_CASE("cancel: at most max_cancels_in_flight cancels hang on a dead path at once, and past them none is tried",
          "[unit][libpq][cancel]") {
    namespace net = pqpool::test::net;
    using pqpool::detail::cancels_in_flight;
    using pqpool::detail::max_cancels_in_flight;
    REQUIRE(cancels_in_flight().load() == 0);
    // A listener that never accepts: each connection (the connect's own, and each cancel's) waits
    // in its backlog, and a cancel request sent there is never answered (a hung server behind a
    // load balancer): PQcancel, which takes no timeout, waits until the socket closes.
    const int listener = net::listen_loopback(64);
    const std::string conninfo =
        "host=127.0.0.1 port=" + std::to_string(net::local_port(listener)) + " sslmode=disable connect_timeout=30";
    constexpr int connections = max_cancels_in_flight + 4;
    std::vector<PGconn*> conns;
    for (int i = 0; i < connections; ++i) {
        conns.push_back(PQconnectStart(conninfo.c_str()));
        REQUIRE(conns.back());
        REQUIRE(PQsocket(conns.back()) >= 0); // connecting: it has a socket and an address to cancel at
    }
    for (PGconn* c : conns) pqpool::detail::cancel_running(c, 20ms);
    CHECK(cancels_in_flight().load() == max_cancels_in_flight);
    // Each connection that reached the listener: the connects, and one per cancel tried.
    std::vector<int> accepted;
    const auto take = [&] {
        for (int fd; (fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC)) >= 0;) accepted.push_back(fd);
    };
    for (int i = 0; i < 100 && accepted.size() < std::size_t{connections + max_cancels_in_flight}; ++i) {
        take();
        std::this_thread::sleep_for(10ms);
    }
    std::this_thread::sleep_for(100ms); // a cancel past the limit would have connected by now
    take();
    CHECK(accepted.size() == std::size_t{connections + max_cancels_in_flight});
    // Closing the path ends the hung cancels, and their places are free again.
    for (int fd : accepted) ::close(fd);
    ::close(listener);
    for (int i = 0; i < 500 && cancels_in_flight().load() != 0; ++i) std::this_thread::sleep_for(10ms);
    CHECK(cancels_in_flight().load() == 0);
    for (PGconn* c : conns) PQfinish(c);
}
