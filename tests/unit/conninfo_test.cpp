// What libpq_connector refuses when it is built, without a server: values
// libpq would only refuse at every connect, nonsense timeouts, and URIs whose
// password libpq would carve into other fields. Each message names the
// keyword (or field), the value and what is allowed, and never a password.

#include "catch.hpp"

#include <pqpool/connector/libpq.hpp>

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using pqpool::config_error;
using pqpool::libpq_connector;
using pqpool::libpq_options;

namespace {

// The message of the config_error that building a connector throws.
std::string refusal(const std::string& conninfo, libpq_options options = {}) {
    try {
        libpq_connector c{conninfo, std::move(options)};
        FAIL("accepted: " << conninfo << " (" << c.description() << ")");
    } catch (const config_error& e) {
        return e.what();
    }
    return {};
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

} // namespace

TEST_CASE("libpq_connector: values libpq would refuse at every connect are refused when it is built", "[unit][libpq]") {
    struct bad {
        std::string words; // appended to a valid conninfo
        std::string keyword, value, allowed;
    };
    const std::vector<bad> cases = {
        {"connect_timeout=abc", "connect_timeout", "\"abc\"", "whole number of seconds"},
        {"connect_timeout=1.5", "connect_timeout", "\"1.5\"", "whole number of seconds"},
        {"target_session_attrs=bogus", "target_session_attrs", "\"bogus\"", "prefer-standby"},
        {"gssencmode=sometimes", "gssencmode", "\"sometimes\"", "disable, prefer or require"},
        {"channel_binding=maybe", "channel_binding", "\"maybe\"", "disable, prefer or require"},
        {"sslmode=sometimes", "sslmode", "\"sometimes\"", "verify-full"},
        {"keepalives=-1", "keepalives", "\"-1\"", "0 (off) or 1 (on)"},
        {"keepalives_idle=abc", "keepalives_idle", "\"abc\"", "seconds"},
        {"keepalives_interval=-3", "keepalives_interval", "\"-3\"", "seconds"},
        {"keepalives_count=x", "keepalives_count", "\"x\"", "whole number"},
        {"tcp_user_timeout=-1", "tcp_user_timeout", "\"-1\"", "milliseconds"},
        {"port=0", "port", "\"0\"", "1 to 65535"},
        {"port=70000", "port", "\"70000\"", "1 to 65535"},
        {"port=fivefourthreetwo", "port", "\"fivefourthreetwo\"", "1 to 65535"},
        {"ssl_min_protocol_version=TLSv9", "ssl_min_protocol_version", "\"TLSv9\"", "TLSv1.3"},
        {"ssl_max_protocol_version=SSLv3", "ssl_max_protocol_version", "\"SSLv3\"", "TLSv1.3"},
        {"ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2", "ssl_min_protocol_version", "\"TLSv1.3\"",
         "at most ssl_max_protocol_version"},
        {"hostaddr=not-an-address", "hostaddr", "\"not-an-address\"", "numeric IPv4 or IPv6"},
    };
    for (const bad& b : cases) {
        const std::string msg = refusal("host=db.example dbname=app user=app password=hunter2 " + b.words);
        CAPTURE(b.words, msg);
        CHECK(msg.rfind("pqpool: ", 0) == 0);
        CHECK(has(msg, b.keyword));
        CHECK(has(msg, b.value));
        CHECK(has(msg, b.allowed));
        CHECK_FALSE(has(msg, "hunter2"));
    }
    SECTION("counts of hosts, addresses and ports") {
        CHECK(has(refusal("host=a,b,c port=1,2"), "one port for all hosts, or one per host"));
        CHECK(has(refusal("host=a,b,c hostaddr=127.0.0.1,127.0.0.2"), "one per host name"));
    }
    SECTION("the values libpq accepts are accepted") {
        CHECK_NOTHROW(libpq_connector{"host=a,b,c port=1,2,3 connect_timeout=' 7 ' keepalives=1 keepalives_idle=0 "
                                      "target_session_attrs=prefer-standby gssencmode=disable channel_binding=require "
                                      "ssl_min_protocol_version=TLSv1.2 ssl_max_protocol_version=TLSv1.3"});
        CHECK_NOTHROW(libpq_connector{"host=a,b hostaddr=127.0.0.1,::1 port=5432"});
        CHECK_NOTHROW(libpq_connector{"host=a,,c port=,5433,"});
    }
}

TEST_CASE("libpq_options: nonsense timeouts are refused, huge ones mean no limit", "[unit][libpq]") {
    const std::string ci = "host=db.example";
    CHECK(has(refusal(ci, libpq_options{.connect_timeout = 0ms}), "connect_timeout is 0 ms"));
    CHECK(has(refusal(ci, libpq_options{.connect_timeout = -1s}), "connect_timeout is -1000 ms"));
    CHECK(has(refusal(ci, libpq_options{.io_timeout = 0ms}), "io_timeout is 0 ms"));
    CHECK(has(refusal(ci, libpq_options{.io_timeout = -5ms}), "at least 1 ms"));
    constexpr auto forever = std::chrono::milliseconds::max();
    CHECK_NOTHROW(libpq_connector{ci, libpq_options{.connect_timeout = forever, .io_timeout = forever}});
}

TEST_CASE("libpq_connector: a URI whose password libpq would carve up is refused without quoting it", "[unit][libpq]") {
    struct carved {
        std::string uri;
        std::vector<std::string> pieces; // of the password
    };
    const std::vector<carved> cases = {
        {"postgresql://u:Right-Pass/42@host/db", {"Right", "Pass", "Right-Pass", "42@host"}},
        {"postgresql://u:9hQe2/Zk8Wq4Rt@127.0.0.1/db", {"9hQe2", "Zk8Wq4Rt"}},
        {"postgresql://u:Pa@ss-Word-7@127.0.0.1/db", {"ss-Word-7", "Word"}},
        {"postgresql://u:Kq7?Zw4/Vb9@127.0.0.1/db", {"Kq7", "Zw4", "Vb9"}},
        {"postgres://u:a/b@c@host:5432/db?sslmode=require", {"a/b@c", "b@c"}},
        // Found by tests/fuzz/fuzz_conninfo: with no '/' before it, the '@'
        // of a query's password ends libpq's user-info (the user becomes
        // "db.example?password=Kq7", the host "Zw4").
        {"postgresql://db.example?password=Kq7@Zw4/Vb9", {"Kq7", "Zw4", "Vb9"}},
        {"postgresql://h:5432?sslpassword=Kq7@Zw4", {"Kq7", "Zw4"}},
    };
    for (const carved& c : cases) {
        const std::string msg = refusal(c.uri);
        CAPTURE(c.uri, msg);
        CHECK(has(msg, "must be percent-encoded"));
        for (const std::string& piece : c.pieces) CHECK_FALSE(has(msg, piece));
        CHECK_FALSE(has(msg, "127.0.0.1"));
    }
    SECTION("well-formed URIs are accepted") {
        for (const std::string uri :
             {"postgresql://u:Right-Pass%2F42@host/db", "postgresql://u:Pa%40ss-Word-7@h/db",
              "postgresql://u:a?b#c:d&e=f@h:5432/db", "postgresql://host:5432/db?user=a@b",
              "postgresql://[::1]:5432/db", "postgresql://u@h1:5432,h2:5433/db", "postgresql:///db?host=/tmp"}) {
            CAPTURE(uri);
            CHECK_NOTHROW(libpq_connector{uri});
        }
    }
}

TEST_CASE("libpq_connector: a password that libpq reads as part of another value is refused without quoting it",
          "[unit][libpq]") {
    // Found by tests/fuzz/fuzz_conninfo. libpq skips the blank after '=', so
    // an empty value makes the next word its value; an open quote runs on; a
    // URI's query begun with '&' is part of the database name. The host (or
    // sslmode, or dbname) then held the password, and every message quoted it.
    for (const std::string conninfo :
         {"host= password='Kq7/Zw4Vb' dbname=app", "host=db sslmode='require password=Kq7Zw4Vb'",
          "host=db application_name='app sslpassword=Kq7Zw4Vb' port=5432",
          "postgresql://db.example/app&password=Kq7Zw4Vb"}) {
        const std::string msg = refusal(conninfo);
        CAPTURE(conninfo, msg);
        CHECK(has(msg, "holds a password"));
        CHECK_FALSE(has(msg, "Kq7"));
        CHECK_FALSE(has(msg, "Zw4Vb"));
    }
}

TEST_CASE("libpq_connector: a parse error quoting a password that spans lines shows none of it", "[unit][libpq]") {
    // Found by tests/fuzz/fuzz_conninfo: libpq quotes the whole malformed
    // value, newline and all; the scrubbing went line by line and kept the
    // second line's part, the one before the closing quote.
    const std::string msg = refusal("postgresql://h/app?password=Kq7\nZw4%zVb");
    CAPTURE(msg);
    CHECK(has(msg, "invalid percent-encoded token"));
    CHECK_FALSE(has(msg, "Kq7"));
    CHECK_FALSE(has(msg, "Zw4"));
    CHECK_FALSE(has(msg, "zVb"));
}

TEST_CASE("libpq_connector: a certificate path naming a FIFO does not block the constructor", "[unit][libpq]") {
    // Found while checking that the constructor does no I/O that can wait:
    // its readability check open()ed the file, and open() of a FIFO for
    // reading waits for a writer, forever. Built in a child, so that a hang
    // fails the test instead of hanging it.
    char dir[] = "/tmp/pqpool-fifo-XXXXXX";
    REQUIRE(::mkdtemp(dir) != nullptr);
    const std::string fifo = std::string(dir) + "/root.crt";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        try {
            libpq_connector c{"host=db.example sslrootcert=" + fifo};
        } catch (const config_error&) {}
        ::_exit(0);
    }
    int status = 0;
    pid_t done = 0;
    for (int i = 0; i < 500 && done == 0; ++i) {
        done = ::waitpid(pid, &status, WNOHANG);
        if (done == 0) std::this_thread::sleep_for(10ms);
    }
    if (done == 0) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
    }
    ::unlink(fifo.c_str());
    ::rmdir(dir);
    CHECK(done == pid);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
}
