// libpq_options::credentials without a server: the callable is asked once per
// host tried, with that host; what it gives replaces the connection string's;
// its failures are connect_errors with its message and none of its secrets.
// (Against a real server, and a password rotating under load:
// tests/integration/credentials_test.cpp.)

#include "catch.hpp"
#include "child.hpp"
#include "sockets.hpp"

#include <pqpool/connector/libpq.hpp>
#include <pqpool/pool.hpp>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace pqpool;
using namespace std::chrono_literals;

namespace {

using test::net::closed_port;

struct seen_host {
    std::string host, hostaddr, port, dbname, user;
};

std::string connect_failure(const libpq_connector& c) {
    try {
        c.connect(libpq_connector::clock::now() + 10s);
    } catch (const connect_error& e) {
        return e.what();
    }
    FAIL("connected to a closed port");
    return {};
}

} // namespace

TEST_CASE("credentials: asked once per host tried, with that host, the database and the user",
          "[unit][libpq][credentials]") {
    const std::string p1 = std::to_string(closed_port()), p2 = std::to_string(closed_port());
    std::vector<seen_host> seen;
    const libpq_connector c{"host=127.0.0.1,localhost hostaddr=127.0.0.1,127.0.0.1 port=" + p1 + "," + p2 +
                                " user=app_user",
                            {.credentials = [&](const connect_host& h) {
                                seen.push_back({std::string(h.host), std::string(h.hostaddr), std::string(h.port),
                                                std::string(h.dbname), std::string(h.user)});
                                return connect_credentials{.password = "Zt4-secret-" + std::to_string(seen.size())};
                            }}};
    const std::string msg = connect_failure(c);
    REQUIRE(seen.size() == 2);
    CHECK(seen[0].host == "127.0.0.1");
    CHECK(seen[0].port == p1);
    CHECK(seen[1].host == "localhost");
    CHECK(seen[1].hostaddr == "127.0.0.1");
    CHECK(seen[1].port == p2);
    for (const seen_host& h : seen) {
        CHECK(h.user == "app_user");
        CHECK(h.dbname == "app_user"); // libpq's rule: the database defaults to the user
    }
    CHECK_THAT(msg, Catch::Contains("host 127.0.0.1 (127.0.0.1):" + p1) &&
                        Catch::Contains("host localhost (127.0.0.1):" + p2));
    CHECK(msg.find("Zt4") == std::string::npos);
    // Each connect asks again.
    connect_failure(c);
    CHECK(seen.size() == 4);
}

TEST_CASE("credentials: a callable that fails fails the connect with its message, never its secrets",
          "[unit][libpq][credentials]") {
    const std::string port = std::to_string(closed_port());
    int calls = 0;
    const libpq_connector c{"host=127.0.0.1 port=" + port + " user=u password=Zc1-static",
                            {.credentials = [&](const connect_host&) -> connect_credentials {
                                if (++calls == 1) return {.password = "Zc1-token-AAAA"};
                                throw std::runtime_error("the token Zc1-token-AAAA has expired, and Zc1-static too");
                            }}};
    connect_failure(c); // refused port; the callable gave a token
    connect_error failure{"", "", false};
    try {
        c.connect(libpq_connector::clock::now() + 10s);
        FAIL("connected");
    } catch (const connect_error& e) {
        failure = e;
    }
    const std::string msg = failure.what();
    CAPTURE(msg);
    CHECK_THAT(msg, Catch::Contains("the credentials callable failed: the token *** has expired, and *** too"));
    CHECK(msg.find("Zc1") == std::string::npos);
    CHECK(failure.transient()); // a secrets store that did not answer may answer next time

    // Its own connect_error keeps its transience; a config_error is not transient.
    for (bool transient : {true, false}) {
        const libpq_connector d{"host=127.0.0.1 port=" + port,
                                {.credentials = [&](const connect_host&) -> connect_credentials {
                                    throw connect_error("vault sealed", "", transient);
                                }}};
        try {
            d.connect(libpq_connector::clock::now() + 10s);
        } catch (const connect_error& e) {
            CHECK(e.transient() == transient);
            CHECK_THAT(e.what(), Catch::Contains("the credentials callable failed: vault sealed"));
        }
    }
    const libpq_connector e{
        "host=127.0.0.1 port=" + port,
        {.credentials = [](const connect_host&) -> connect_credentials { throw config_error("no such secret"); }}};
    try {
        e.connect(libpq_connector::clock::now() + 10s);
    } catch (const connect_error& err) {
        CHECK_FALSE(err.transient());
    }
}

TEST_CASE("credentials: what the callable gives replaces the connection string's, within limits",
          "[unit][libpq][credentials]") {
    const std::string port = std::to_string(closed_port());
    auto with = [&](connect_credentials given) {
        return libpq_connector{"host=127.0.0.1 port=" + port + " user=u",
                               {.credentials = [given](const connect_host&) { return given; }}};
    };
    // Keywords that would change which hosts are tried, and words that are no keyword, end the attempt.
    for (const char* keyword : {"host", "hostaddr", "port", "service", "target_session_attrs"}) {
        CAPTURE(keyword);
        const std::string msg = connect_failure(with({.parameters = {{keyword, "x"}}}));
        CHECK_THAT(msg, Catch::Contains(std::string("the credentials callable gave ") + keyword +
                                        ", which only the connection string may set"));
    }
    CHECK_THAT(connect_failure(with({.parameters = {{"passwrod", "x"}}})),
               Catch::Contains("the credentials callable gave \"passwrod\", which is not a connection keyword"));
    // What it gives as a password or another secret is scrubbed from libpq's text like a password given in
    // the connection string (here a secret that happens to be a word of libpq's message).
    const std::string msg = connect_failure(
        with({.password = "Zp2-pw", .parameters = {{"sslpassword", "refused"}, {"user", "other_user"}}}));
    CHECK_THAT(msg, Catch::Contains("Connection ***"));
    CHECK(msg.find("refused") == std::string::npos);
    CHECK(msg.find("Zp2") == std::string::npos);
}

TEST_CASE("credentials: merging what the callable gave into a host's keywords", "[unit][libpq][credentials]") {
    const auto& vocab = detail::libpq_vocabulary();
    std::vector<std::string> keywords{"host", "user", "password", "sslmode"}, values{"db", "app", "old", "require"};
    std::vector<std::string> secrets;
    CHECK_FALSE(detail::merge_credentials(
        {.password = "Zm1-new",
         .parameters = {{"user", "app_v2"}, {"sslpassword", "Zm1-key"}, {"application_name", "x"}}},
        vocab, keywords, values, secrets));
    CHECK(keywords ==
          std::vector<std::string>{"host", "user", "password", "sslmode", "sslpassword", "application_name"});
    CHECK(values == std::vector<std::string>{"db", "app_v2", "Zm1-new", "require", "Zm1-key", "x"});
    CHECK(secrets == std::vector<std::string>{"Zm1-new", "Zm1-key"}); // what is scrubbed from messages
    // No password given: the connection string's stays.
    CHECK_FALSE(detail::merge_credentials({}, vocab, keywords, values, secrets));
    CHECK(values[2] == "Zm1-new");
    // A refused keyword leaves everything as it was.
    const auto before = values;
    CHECK(detail::merge_credentials({.password = "Zm1-other", .parameters = {{"port", "1"}}}, vocab, keywords, values,
                                    secrets)
              .value_or("")
              .find("only the connection string may set") != std::string::npos);
    CHECK(values == before);
}

TEST_CASE("credentials: a child forked while a parent thread is inside the callable inherits none of its locks",
          "[unit][libpq][credentials][fork]") {
    // The callable holds a lock of its own (its cache's, an HTTP client's) while it works; fork()
    // waits for it to return, as for any of the connector's libpq connect steps.
    std::mutex store;
    std::atomic<bool> inside{false}, forked{false};
    const std::string port = std::to_string(closed_port());
    const libpq_connector c{"host=127.0.0.1 port=" + port + " user=u", {.credentials = [&](const connect_host&) {
                                const std::lock_guard lock(store);
                                if (!inside.exchange(true)) std::this_thread::sleep_for(300ms);
                                return connect_credentials{.password = "Zf5-token"};
                            }}};
    std::thread connecting([&] {
        connect_failure(c);
        while (!forked) std::this_thread::yield(); // alive at the fork (ThreadSanitizer)
    });
    while (!inside) std::this_thread::yield();
    const auto start = std::chrono::steady_clock::now();
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::alarm(5); // a child that hangs dies of SIGALRM, and the test fails
        try {
            c.connect(libpq_connector::clock::now() + 2s);
        } catch (const connect_error& e) {
            ::_exit(std::string(e.what()).find("Connection refused") != std::string::npos ? 0 : 1);
        }
        ::_exit(2);
    }
    const auto waited = std::chrono::steady_clock::now() - start;
    forked = true;
    connecting.join();
    test::check_child_succeeded(pid);
    CAPTURE(std::chrono::duration_cast<std::chrono::milliseconds>(waited).count());
    CHECK(waited >= 200ms); // the fork waited for the callable
}

TEST_CASE("credentials: the callable's time is the one exception to acquire's bound besides a host-name lookup, "
          "and only its own time",
          "[unit][libpq][credentials][bounds]") {
    // README, Guarantees: acquire_for(d) returns within d plus a small margin, except for a host-name
    // lookup and the credentials callable, which are not interrupted.
    const std::string port = std::to_string(closed_port());
    pool<retry::none> p{
        libpq_connector{"host=127.0.0.1 port=" + port + " user=u", {.credentials = [](const connect_host&) {
                            std::this_thread::sleep_for(600ms); // a slow secrets store
                            return connect_credentials{.password = "Zb8-pw"};
                        }}}};
    const auto start = std::chrono::steady_clock::now();
    CHECK_THROWS_AS(p.acquire_for(100ms), error);
    const auto took = std::chrono::steady_clock::now() - start;
    CAPTURE(std::chrono::duration_cast<std::chrono::milliseconds>(took).count());
    CHECK(took >= 600ms);
    CHECK(took < 600ms + 100ms + 400ms); // the callable's time, the wait, the margin
}
