// The AWS RDS IAM token: the Signature Version 4 steps against AWS's published
// examples, the whole token byte for byte against botocore's
// generate_db_auth_token (Debian's python3-botocore, run here with fixed
// credentials and a frozen clock), and rds_iam_auth's cache.

#include "catch.hpp"
#include "child.hpp"
#include "sockets.hpp"

#include <pqpool/connector/rds_iam.hpp>
#include <pqpool/pool.hpp>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

using namespace pqpool;
using namespace std::chrono;

namespace {

namespace s4 = detail::sigv4;

// The example secret key of AWS's documentation.
const std::string example_secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

system_clock::time_point utc(int y, unsigned mo, unsigned d, int h, int mi, int s) {
    return system_clock::time_point(sys_days{year{y} / month{mo} / day{d}}) + hours{h} + minutes{mi} + seconds{s};
}

struct token_case {
    aws_credentials credentials;
    std::string region, host;
    unsigned port;
    std::string user;
    system_clock::time_point at;
};

// botocore's tokens for `cases`, one per case, from tests/support/botocore_token.py.
std::vector<std::string> botocore_tokens(const std::vector<token_case>& cases) {
    char input[] = "/tmp/pqpool-botocore.XXXXXX";
    const int fd = ::mkstemp(input);
    REQUIRE(fd >= 0);
    ::close(fd);
    {
        std::ofstream out(input);
        for (const token_case& c : cases)
            out << c.credentials.access_key_id << '\t' << c.credentials.secret_access_key << '\t'
                << (c.credentials.session_token.empty() ? "-" : c.credentials.session_token) << '\t' << c.region << '\t'
                << c.host << '\t' << c.port << '\t' << c.user << '\t'
                << duration_cast<seconds>(c.at.time_since_epoch()).count() << '\n';
    }
    const std::string cmd =
        std::string("/usr/bin/python3 '") + PQPOOL_TEST_SOURCE_DIR "/support/botocore_token.py' < '" + input + "'";
    FILE* p = ::popen(cmd.c_str(), "r");
    REQUIRE(p);
    std::vector<std::string> tokens;
    std::string line;
    for (int ch; (ch = std::fgetc(p)) != EOF;) {
        if (ch != '\n') {
            line += static_cast<char>(ch);
            continue;
        }
        tokens.push_back(line);
        line.clear();
    }
    const int status = ::pclose(p);
    ::unlink(input);
    INFO("botocore (python3-botocore, installed by scripts/install-deps) must run: " << cmd);
    REQUIRE(status == 0);
    REQUIRE(tokens.size() == cases.size());
    return tokens;
}

} // namespace

TEST_CASE("sigv4: the signing key and signature of AWS's published examples", "[unit][rds_iam]") {
    // "Examples of how to derive a signing key for Signature Version 4".
    CHECK(s4::hex(s4::hmac_sha256("AWS4" + example_secret, "20120215")) ==
          "969fbb94feb542b71ede6f87fe4d5fa29c789342b0f407474670f0c2489e0a0d");
    CHECK(s4::hex(s4::signing_key(example_secret, "20120215", "us-east-1", "iam")) ==
          "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d");
    // The IAM ListUsers request of the SigV4 documentation, step by step.
    const std::string canonical_request =
        "GET\n/\nAction=ListUsers&Version=2010-05-08\ncontent-type:application/x-www-form-urlencoded; "
        "charset=utf-8\nhost:iam.amazonaws.com\nx-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    CHECK(s4::hex(s4::sha256(canonical_request)) == "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59");
    const std::string to_sign =
        s4::string_to_sign("20150830T123600Z", "20150830/us-east-1/iam/aws4_request", canonical_request);
    CHECK(to_sign == "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/iam/aws4_request\n"
                     "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59");
    const auto key = s4::signing_key(example_secret, "20150830", "us-east-1", "iam");
    CHECK(s4::hex(key) == "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9");
    CHECK(s4::hex(s4::hmac_sha256(key, to_sign)) == "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7");

    CHECK(s4::sha256("").size() == 32);
    CHECK(s4::uri_encode("a-Z_0.~ /@+=%") == "a-Z_0.~%20%2F%40%2B%3D%25");
    CHECK(s4::amz_date(utc(2024, 3, 5, 14, 7, 9)) == "20240305T140709Z");
}

TEST_CASE("rds_iam_token: byte for byte what botocore's generate_db_auth_token gives", "[unit][rds_iam]") {
    const aws_credentials plain{"AKIDEXAMPLE", example_secret};
    const aws_credentials temporary{"ASIAEXAMPLE", "s3cr/t+key=", "FQoGZXIvYXdzE/session+token=="};
    const std::vector<token_case> cases = {
        {plain, "eu-west-1", "mydb.cluster-abc.eu-west-1.rds.amazonaws.com", 5432, "iam_user",
         utc(2024, 3, 5, 14, 7, 9)},
        {temporary, "us-east-1", "prod.abc.us-east-1.rds.amazonaws.com", 5432, "app", utc(2023, 12, 31, 23, 59, 59)},
        // Upper case in the host (signed in lower case), HTTPS's own port (left out of the Host header),
        // a user name that needs encoding, the first second of a day.
        {plain, "ap-southeast-2", "MyDB.Example.ap-southeast-2.RDS.amazonaws.com", 443, "app@corp/ops x+y",
         utc(2024, 2, 29, 0, 0, 0)},
        {temporary, "eu-central-1", "db.internal", 6543, "ünïcode", utc(2030, 1, 1, 12, 0, 0)},
    };
    const std::vector<std::string> expected = botocore_tokens(cases);
    for (std::size_t i = 0; i < cases.size(); ++i) {
        const token_case& c = cases[i];
        CAPTURE(i);
        CHECK(rds_iam_token(c.credentials, c.region, c.host, c.port, c.user, c.at) == expected[i]);
    }
}

TEST_CASE("rds_iam_auth: a token per host and user, cached, signed anew before it expires or when the "
          "credentials change",
          "[unit][rds_iam]") {
    auto now = utc(2024, 3, 5, 14, 0, 0);
    aws_credentials creds{"AKIDEXAMPLE", example_secret};
    int asked = 0;
    rds_iam_auth auth{[&] {
                          ++asked;
                          return creds;
                      },
                      "eu-west-1",
                      {.refresh_after = minutes{10}, .now = [&] { return now; }}};
    const connect_host a{.host = "a.rds.amazonaws.com", .port = "5432", .dbname = "app", .user = "u"};
    const connect_host b{.host = "b.rds.amazonaws.com", .port = "", .dbname = "app", .user = "u"};

    const std::string first = auth(a).password;
    CHECK(first == rds_iam_token(creds, "eu-west-1", "a.rds.amazonaws.com", 5432, "u", now));
    CHECK(auth(b).password == rds_iam_token(creds, "eu-west-1", "b.rds.amazonaws.com", 5432, "u", now));
    now += minutes{9} + seconds{59};
    CHECK(auth(a).password == first); // cached: 9:59 old
    const rds_iam_auth copy = auth;   // copies share the cache
    CHECK(copy(a).password == first);
    now += seconds{1};
    const std::string second = auth(a).password; // 10 min old: signed anew, 5 min before it expires
    CHECK(second != first);
    CHECK(second == rds_iam_token(creds, "eu-west-1", "a.rds.amazonaws.com", 5432, "u", now));
    creds.session_token = "rotated-session"; // the credentials rotated: a token signed with them
    CHECK(auth(a).password == rds_iam_token(creds, "eu-west-1", "a.rds.amazonaws.com", 5432, "u", now));
    CHECK(asked == 6); // asked at each call: rotated credentials are seen at the next connect
    now -= hours{1};   // the clock went back: no token dated in the future is kept
    CHECK(auth(a).password == rds_iam_token(creds, "eu-west-1", "a.rds.amazonaws.com", 5432, "u", now));
}

TEST_CASE("rds_iam_auth: nonsense settings are config_errors, a host it cannot sign for fails the connect",
          "[unit][rds_iam]") {
    const aws_credentials creds{"AKIDEXAMPLE", example_secret};
    CHECK_THROWS_WITH((rds_iam_auth{creds, ""}), Catch::Contains("region is empty"));
    CHECK_THROWS_WITH((rds_iam_auth{aws_credentials{"AKID", ""}, "eu-west-1"}), Catch::Contains("key is empty"));
    CHECK_THROWS_WITH((rds_iam_auth{creds, "eu-west-1", {.refresh_after = minutes{15}}}),
                      Catch::Contains("refresh_after is 900 s"));
    CHECK_THROWS_AS((rds_iam_auth{creds, "eu-west-1", {.refresh_after = seconds{0}}}), config_error);
    const rds_iam_auth auth{creds, "eu-west-1"};
    CHECK_THROWS_AS(auth(connect_host{.host = "/var/run/postgresql", .user = "u"}), config_error);
    CHECK_THROWS_AS(auth(connect_host{.host = "", .user = "u"}), config_error);
    CHECK_THROWS_AS(auth(connect_host{.host = "h", .user = ""}), config_error);

    // Through the connector: with a Unix socket host the connect fails with the reason, not transient.
    const libpq_connector c{"host=/tmp dbname=x user=u", {.credentials = auth}};
    try {
        c.connect(libpq_connector::clock::now() + seconds{5});
        FAIL("connected");
    } catch (const connect_error& e) {
        CHECK_THAT(e.what(), Catch::Contains("the credentials callable failed: pqpool: rds_iam_auth needs one host"));
        CHECK_FALSE(e.transient());
    }
}

TEST_CASE("rds_iam_auth: a slow credentials source holds up no other connect, such as another pool's sharing it",
          "[unit][rds_iam][credentials]") {
    const aws_credentials creds{"AKIDEXAMPLE", example_secret};
    std::atomic<int> calls{0};
    std::atomic<bool> release{false};
    const auto slow_until = steady_clock::now() + seconds{3};
    rds_iam_auth auth{[&] {
                          if (calls++ == 0) // the first: an instance metadata service slow to answer
                              while (!release && steady_clock::now() < slow_until) std::this_thread::sleep_for(1ms);
                          return creds;
                      },
                      "eu-west-1"};
    // Two pools, two hosts, nothing shared but the token provider; nothing listens there.
    const std::string port = std::to_string(test::net::closed_port());
    pool<retry::none> a{libpq_connector{"host=db-a.invalid hostaddr=127.0.0.1 port=" + port + " dbname=x user=x",
                                        {.credentials = auth}}};
    pool<retry::none> b{libpq_connector{"host=db-b.invalid hostaddr=127.0.0.1 port=" + port + " dbname=x user=x",
                                        {.credentials = auth}}};
    std::thread first([&] { CHECK_THROWS_AS(a.acquire_for(seconds{5}), connect_error); });
    while (calls == 0) std::this_thread::yield();
    const auto start = steady_clock::now();
    CHECK_THROWS_AS(b.acquire_for(100ms), connect_error); // signed, tried, refused: not held by a's source
    const auto took = duration_cast<milliseconds>(steady_clock::now() - start);
    release = true;
    first.join();
    CAPTURE(took.count());
    CHECK(took < 600ms);
    CHECK(calls == 2);
}

TEST_CASE("rds_iam_auth: a child forked while a parent thread asks the credentials source can sign and connect",
          "[unit][rds_iam][fork]") {
    const aws_credentials creds{"AKIDEXAMPLE", example_secret};
    std::atomic<bool> in_source{false}, forked{false};
    rds_iam_auth auth{[&] {
                          if (!in_source.exchange(true)) std::this_thread::sleep_for(300ms); // the parent's first
                          return creds;
                      },
                      "eu-west-1"};
    const std::string port = std::to_string(test::net::closed_port());
    pool<retry::none> p{
        libpq_connector{"host=db.invalid hostaddr=127.0.0.1 port=" + port + " dbname=x user=x", {.credentials = auth}}};
    std::thread connecting([&] {
        CHECK_THROWS_AS(p.acquire_for(seconds{5}), connect_error);
        while (!forked) std::this_thread::yield(); // alive at the fork (ThreadSanitizer)
    });
    while (!in_source) std::this_thread::yield();
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::alarm(5); // a child that hangs dies of SIGALRM, and the test fails
        try {
            (void)p.acquire_for(500ms);
        } catch (const connect_error& e) {
            // The token was signed (the cache's lock was free) and the connect was refused.
            ::_exit(std::string(e.what()).find("Connection refused") != std::string::npos ? 0 : 1);
        } catch (...) {}
        ::_exit(2);
    }
    forked = true;
    connecting.join();
    test::check_child_succeeded(pid);
}
