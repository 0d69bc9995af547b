// fault_proxy (tests/support/fault_proxy.hpp): each fault seen from a client,
// against a byte echo server (where the bytes and the socket-level signals,
// RST versus FIN, can be checked exactly) and against the sandbox PostgreSQL
// over TLS (what a libpq user sees); per-connection control; and a destructor
// that is prompt and leaves no descriptor behind.

#include "catch.hpp"
#include "echo_server.hpp"
#include "fault_proxy.hpp"
#include "pq_wait.hpp"
#include "sandbox.hpp"
#include "sockets.hpp"

#include <libpq-fe.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>

using namespace std::chrono_literals;
using pqpool::test::connect_or_throw;
using pqpool::test::echo_server;
using pqpool::test::fault_proxy;
using pqpool::test::pq_outcome;
using pqpool::test::query_within;
using pqpool::test::sandbox;
using pqpool::test::wait_result;
namespace net = pqpool::test::net;
using clock_type = std::chrono::steady_clock;
using kind = pq_outcome::kind;

namespace {

struct fd_guard {
    int fd;
    explicit fd_guard(int f) : fd(f) {}
    fd_guard(const fd_guard&) = delete;
    fd_guard& operator=(const fd_guard&) = delete;
    ~fd_guard() { ::close(fd); }
};

std::chrono::milliseconds since(clock_type::time_point t0) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - t0);
}

// Byte i of the test stream: not periodic in any power of two, so a lost,
// doubled or reordered chunk shows.
char stream_byte(std::size_t i) { return static_cast<char>((i * 7 + 3) % 251); }

void send_all(int fd, std::string_view data) {
    while (!data.empty()) {
        const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) net::fail("send");
        data.remove_prefix(static_cast<std::size_t>(n));
    }
}

// What the next read on `fd` gives within `timeout`.
struct read_outcome {
    enum what_t { data, eof, error, timeout } what;
    int err = 0;
    std::string bytes;
};
read_outcome read_once(int fd, std::chrono::milliseconds timeout) {
    if (net::wait_for(fd, POLLIN, timeout) == 0) return {read_outcome::timeout, 0, {}};
    char buf[65536];
    const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) return {read_outcome::data, 0, std::string(buf, static_cast<std::size_t>(n))};
    if (n == 0) return {read_outcome::eof, 0, {}};
    return {read_outcome::error, errno, {}};
}

// Reads until `n` bytes have come, EOF, an error or `timeout`; what came.
std::string read_n(int fd, std::size_t n, std::chrono::milliseconds timeout) {
    const auto deadline = clock_type::now() + timeout;
    std::string got;
    while (got.size() < n && clock_type::now() < deadline) {
        auto r = read_once(fd, std::chrono::ceil<std::chrono::milliseconds>(deadline - clock_type::now()));
        if (r.what != read_outcome::data) break;
        got += r.bytes;
    }
    return got;
}

// An echo round trip of a few bytes; its duration.
std::chrono::milliseconds round_trip(int fd) {
    const auto t0 = clock_type::now();
    send_all(fd, "ping");
    REQUIRE(read_n(fd, 4, 10s) == "ping");
    return since(t0);
}

// The receive queue (bytes received, not yet read by the application) of the
// IPv4 TCP socket local_port <-> remote_port, from /proc/net/tcp; -1 if none.
long rx_queue(int local_port, int remote_port) {
    std::ifstream in("/proc/net/tcp");
    std::string line;
    std::getline(in, line); // header
    while (std::getline(in, line)) {
        std::istringstream f(line);
        std::string sl, local, remote, state, queues;
        f >> sl >> local >> remote >> state >> queues;
        auto port_of = [](const std::string& addr) { return std::stoi(addr.substr(addr.find(':') + 1), nullptr, 16); };
        if (port_of(local) == local_port && port_of(remote) == remote_port)
            return std::stol(queues.substr(queues.find(':') + 1), nullptr, 16);
    }
    return -1;
}

std::string tls() { return sandbox::get().tls(); }
int server_port() { return std::stoi(sandbox::get().var("PQPOOL_TEST_PORT")); }

// An echo server behind a proxy, and a client connection through it that has
// made one round trip.
struct echo_through_proxy {
    echo_server echo;
    fault_proxy proxy{echo.port()};
    fd_guard c{net::connect_loopback(proxy.port())};
    echo_through_proxy() { round_trip(c.fd); }

    // After a fault for all: a new connection gets the same at its first read,
    // and after heal() one works.
    void new_connection_reads(read_outcome::what_t what, int err) {
        fd_guard again{net::connect_loopback(proxy.port())};
        const auto r = read_once(again.fd, 2s);
        CHECK(r.what == what);
        CHECK(r.err == err);
        proxy.heal();
        fd_guard healed{net::connect_loopback(proxy.port())};
        CHECK(round_trip(healed.fd) < 1s);
    }
};

// The sandbox server behind a proxy, and a libpq connection through it that has
// run one query.
struct pq_through_proxy {
    fault_proxy proxy{server_port()};
    pqpool::test::pq_ptr c = connect_or_throw(proxy.route(tls()));
    pq_through_proxy() { REQUIRE(query_within(c.get(), "SELECT 1", 5s).text == "1"); }
};

} // namespace

TEST_CASE("pass forwards a MiB both ways byte for byte, and a FIN", "[proxy]") {
    echo_server echo;
    fault_proxy proxy{echo.port()};
    fd_guard c{net::connect_loopback(proxy.port())};
    REQUIRE(proxy.wait_for_connections(1, 2s));

    constexpr std::size_t size = std::size_t{1} << 20;
    std::string sent_stream(size, '\0');
    for (std::size_t i = 0; i < size; ++i) sent_stream[i] = stream_byte(i);
    net::set_nonblocking(c.fd);
    std::size_t sent = 0;
    std::string got;
    const auto deadline = clock_type::now() + 20s;
    while (got.size() < size && clock_type::now() < deadline) {
        pollfd p{c.fd, static_cast<short>(POLLIN | (sent < size ? POLLOUT : 0)), 0};
        REQUIRE(::poll(&p, 1, 1000) >= 0);
        if ((p.revents & POLLOUT) && sent < size) {
            const ssize_t n =
                ::send(c.fd, sent_stream.data() + sent, std::min<std::size_t>(size - sent, 65536), MSG_NOSIGNAL);
            if (n > 0) sent += static_cast<std::size_t>(n);
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            auto r = read_once(c.fd, 0ms);
            REQUIRE(r.what != read_outcome::error);
            REQUIRE(r.what != read_outcome::eof);
            got += r.bytes;
        }
    }
    REQUIRE(got.size() == size);
    CHECK(got == sent_stream);

    // Our FIN reaches the echo server, and its FIN comes back: then the proxy lets go.
    REQUIRE(::shutdown(c.fd, SHUT_WR) == 0);
    CHECK(read_once(c.fd, 2s).what == read_outcome::eof);
    CHECK(proxy.wait_for_connections(0, 2s));
    CHECK(proxy.accepted() == 1);
}

TEST_CASE("freeze reads nothing and forwards nothing, then heal delivers everything", "[proxy]") {
    echo_through_proxy e;
    fault_proxy& proxy = e.proxy;
    const fd_guard& c = e.c;
    REQUIRE(proxy.connections() == 1);

    proxy.freeze();
    std::string stream(1000, '\0');
    for (std::size_t i = 0; i < stream.size(); ++i) stream[i] = stream_byte(i);
    send_all(c.fd, stream);
    CHECK(read_once(c.fd, 300ms).what == read_outcome::timeout);
    // The proxy's kernel took the bytes (ACKed them), the proxy did not read them.
    CHECK(rx_queue(proxy.port(), net::local_port(c.fd)) == 1000);

    // So the client's send buffer fills up.
    net::set_nonblocking(c.fd);
    bool full = false;
    std::string chunk(65536, '\0');
    for (int i = 0; i < 4096 && !full; ++i) { // at most 256 MiB
        for (std::size_t k = 0; k < chunk.size(); ++k) chunk[k] = stream_byte(stream.size() + k);
        const ssize_t n = ::send(c.fd, chunk.data(), chunk.size(), MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            full = true;
        else if (n < 0)
            net::fail("send");
        else
            stream.append(chunk, 0, static_cast<std::size_t>(n));
    }
    CHECK(full);
    CHECK(proxy.connections() == 1);

    proxy.heal();
    const std::string back = read_n(c.fd, stream.size(), 30s);
    CHECK(back.size() == stream.size());
    CHECK(back == stream);
}

TEST_CASE("freeze makes a SELECT 1 time out, then heal lets it finish", "[proxy]") {
    pq_through_proxy p;
    p.proxy.freeze();
    const auto frozen = query_within(p.c.get(), "SELECT 1", 1s);
    CHECK(frozen.what == kind::timeout);
    CHECK(PQstatus(p.c.get()) == CONNECTION_OK);

    p.proxy.heal();
    const auto healed = wait_result(p.c.get(), 5s);
    CHECK(healed.what == kind::result);
    CHECK(healed.text == "1");
    CHECK(healed.elapsed < 2s);
}

TEST_CASE("reset sends an RST at once, to open and to new connections", "[proxy]") {
    SECTION("echo: the client reads ECONNRESET") {
        echo_through_proxy e;
        const auto t0 = clock_type::now();
        e.proxy.reset();
        const auto r = read_once(e.c.fd, 2s);
        CHECK(r.what == read_outcome::error);
        CHECK(r.err == ECONNRESET);
        CHECK(since(t0) < 1s);
        CHECK(e.proxy.connections() == 0);
        e.new_connection_reads(read_outcome::error, ECONNRESET); // the kernel accepts it, the proxy resets it
    }
    SECTION("libpq: the query fails at once and the connection is BAD") {
        pq_through_proxy p;
        p.proxy.reset();
        const auto o = query_within(p.c.get(), "SELECT 1", 5s);
        INFO(o.text);
        CHECK(o.what == kind::error);
        CHECK(o.elapsed < 2s); // not the 5 s timeout
        CHECK(PQstatus(p.c.get()) == CONNECTION_BAD);
    }
}

TEST_CASE("close sends a FIN, to open and to new connections", "[proxy]") {
    SECTION("echo: the client reads EOF, not an error") {
        echo_through_proxy e;
        e.proxy.close();
        CHECK(read_once(e.c.fd, 2s).what == read_outcome::eof);
        CHECK(e.proxy.connections() == 0);
        e.new_connection_reads(read_outcome::eof, 0);
    }
    SECTION("libpq: the query fails at once with an unexpected close") {
        pq_through_proxy p;
        p.proxy.close();
        const auto o = query_within(p.c.get(), "SELECT 1", 5s);
        CHECK(o.what == kind::error);
        CHECK_THAT(o.text, Catch::Contains("EOF") || Catch::Contains("closed the connection"));
        CHECK(o.elapsed < 2s); // not the 5 s timeout
        CHECK(PQstatus(p.c.get()) == CONNECTION_BAD);
    }
}

TEST_CASE("delay adds its latency each way, heal removes it", "[proxy]") {
    SECTION("echo") {
        echo_through_proxy e;
        e.proxy.delay(150ms);
        const auto slow = round_trip(e.c.fd);
        CHECK(slow >= 300ms);
        CHECK(slow < 2s);
        e.proxy.heal();
        CHECK(round_trip(e.c.fd) < 300ms); // delayed, it would take 300 ms or more
    }
    SECTION("libpq") {
        pq_through_proxy p;
        p.proxy.delay(200ms);
        const auto slow = query_within(p.c.get(), "SELECT 1", 5s);
        CHECK(slow.text == "1");
        CHECK(slow.elapsed >= 400ms);
        CHECK(slow.elapsed < 2s);
        p.proxy.heal();
        const auto fast = query_within(p.c.get(), "SELECT 1", 5s);
        CHECK(fast.text == "1");
        CHECK(fast.elapsed < 400ms); // delayed, it would take 400 ms or more
    }
}

TEST_CASE("blackhole makes a libpq connect time out, open connections go on", "[proxy]") {
    fault_proxy proxy{server_port()};
    auto before = connect_or_throw(proxy.route(tls()));
    proxy.blackhole();

    const auto t0 = clock_type::now();
    pqpool::test::pq_ptr c{PQconnectdb((proxy.route(tls()) + " connect_timeout=2").c_str())};
    const auto took = since(t0);
    INFO(PQerrorMessage(c.get()));
    CHECK(PQstatus(c.get()) == CONNECTION_BAD);
    CHECK(std::string(PQerrorMessage(c.get())).find("timeout expired") != std::string::npos);
    CHECK(took >= 1500ms); // libpq's minimum connect_timeout is 2 s
    CHECK(took < 5s);
    CHECK(proxy.accepted() == 2); // accepted: it is the protocol that goes unanswered
    c.reset();
    CHECK(proxy.wait_for_connections(1, 2s)); // the blackholed one closes when its client does

    CHECK(query_within(before.get(), "SELECT 1", 5s).text == "1");
    proxy.heal();
    // verify-full through the proxy: route() keeps host=localhost for the certificate check.
    auto after = connect_or_throw(proxy.route(sandbox::get().verify_full() + " connect_timeout=5"));
    CHECK(PQsslInUse(after.get()) == 1);
    CHECK(query_within(after.get(), "SELECT 1", 5s).text == "1");
}

TEST_CASE("refuse_new makes a connect fail at once, open connections go on", "[proxy]") {
    SECTION("echo: connect() is refused, the open connection still echoes") {
        echo_through_proxy e;
        e.proxy.refuse_new();
        const int port = e.proxy.port();
        CHECK_THROWS_WITH(net::connect_loopback(port), Catch::Contains(std::strerror(ECONNREFUSED)));
        CHECK(e.proxy.accepted() == 1); // refused by the kernel: the proxy never saw it
        CHECK(round_trip(e.c.fd) < 1s);
        e.proxy.heal(); // does not undo it
        CHECK_THROWS_WITH(net::connect_loopback(port), Catch::Contains(std::strerror(ECONNREFUSED)));
        CHECK(round_trip(e.c.fd) < 1s);
    }
    SECTION("libpq: a connect fails at once, a query on the open connection works") {
        pq_through_proxy p;
        p.proxy.refuse_new();
        const auto t0 = clock_type::now();
        pqpool::test::pq_ptr c{PQconnectdb((p.proxy.route(tls()) + " connect_timeout=5").c_str())};
        INFO(PQerrorMessage(c.get()));
        CHECK(PQstatus(c.get()) == CONNECTION_BAD);
        CHECK_THAT(std::string(PQerrorMessage(c.get())), Catch::Contains("refused"));
        CHECK(since(t0) < 2s); // not the 5 s connect_timeout
        CHECK(query_within(p.c.get(), "SELECT 1", 5s).text == "1");
    }
}

TEST_CASE("a fault on one connection leaves the others alone", "[proxy]") {
    fault_proxy proxy{server_port()};
    auto a = connect_or_throw(proxy.route(tls()));
    auto b = connect_or_throw(proxy.route(tls()));
    const auto ida = proxy.connection_of(PQsocket(a.get()));
    const auto idb = proxy.connection_of(PQsocket(b.get()));
    REQUIRE(ida != idb);

    proxy.freeze(ida);
    CHECK(query_within(a.get(), "SELECT 1", 500ms).what == kind::timeout);
    CHECK(query_within(b.get(), "SELECT 1", 5s).text == "1");

    proxy.reset(ida);
    const auto o = wait_result(a.get(), 2s);
    CHECK(o.what == kind::error);
    CHECK(proxy.connections() == 1);
    CHECK(query_within(b.get(), "SELECT 1", 5s).text == "1");
    CHECK_THROWS_WITH(proxy.freeze(ida), Catch::Contains("no open connection"));

    proxy.delay(idb, 200ms);
    CHECK(query_within(b.get(), "SELECT 1", 5s).elapsed >= 400ms);
    proxy.pass(idb);
    CHECK(query_within(b.get(), "SELECT 1", 5s).elapsed < 400ms);
}

TEST_CASE("the destructor is prompt and closes every descriptor", "[proxy]") {
    const std::size_t fds_before = net::open_fd_count();
    {
        echo_server echo;
        std::chrono::milliseconds took{};
        {
            std::optional<fault_proxy> proxy{std::in_place, echo.port()};
            fd_guard frozen{net::connect_loopback(proxy->port())};
            fd_guard delayed{net::connect_loopback(proxy->port())};
            round_trip(frozen.fd);
            round_trip(delayed.fd);
            proxy->freeze(proxy->connection_of(frozen.fd));
            send_all(frozen.fd, "unread");
            proxy->delay(proxy->connection_of(delayed.fd), 10s);
            send_all(delayed.fd, "held");
            proxy->blackhole();
            fd_guard blackholed{net::connect_loopback(proxy->port())};
            REQUIRE(proxy->wait_for_connections(3, 2s));
            CHECK(net::open_fd_count() > fds_before);

            const auto t0 = clock_type::now();
            proxy.reset(); // with its peers still connected: it waits for none of them
            took = since(t0);
        }
        CHECK(took < 3s); // it waits neither for the 10 s delay nor for any peer
    }
    CHECK(net::open_fd_count() == fds_before);
}
