// TCP keepalives and a TCP user timeout by default, so that a network path
// that died silently becomes a connection error; the user's own values win.

#include "connector_support.hpp"

#include <pqpool/connector/libpq.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <string>

using namespace std::chrono_literals;
using namespace pqpool::test::connector;
using pqpool::libpq_connector;

namespace {

int sockopt(int fd, int level, int name) {
    int value = -1;
    socklen_t len = sizeof value;
    REQUIRE(::getsockopt(fd, level, name, &value, &len) == 0);
    return value;
}

struct tcp_settings {
    int keepalive, idle, interval, count, user_timeout;
};

tcp_settings settings_of(PGconn* h) {
    const int fd = PQsocket(h);
    REQUIRE(fd >= 0);
    return {sockopt(fd, SOL_SOCKET, SO_KEEPALIVE), sockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE),
            sockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL), sockopt(fd, IPPROTO_TCP, TCP_KEEPCNT),
            sockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT)};
}

} // namespace

TEST_CASE("libpq_connector: connections get TCP keepalives and a TCP user timeout by default", "[integration][libpq]") {
    for (const std::string& conninfo : {sbx().tls(), sbx().plain()}) {
        CAPTURE(conninfo);
        const libpq_connector c{conninfo};
        scoped h{c, c.connect(in(10s))};
        const tcp_settings s = settings_of(h.h);
        CHECK(s.keepalive == 1);
        CHECK(s.idle == 30);
        CHECK(s.interval == 10);
        CHECK(s.count == 3);
        CHECK(s.user_timeout == 30000);
    }
}

TEST_CASE("libpq_connector: TCP settings given in the connection string are never overridden", "[integration][libpq]") {
    SECTION("every value given") {
        const libpq_connector c{sbx().tls() +
                                " keepalives_idle=77 keepalives_interval=7 keepalives_count=5 tcp_user_timeout=12345"};
        scoped h{c, c.connect(in(10s))};
        const tcp_settings s = settings_of(h.h);
        CHECK(s.keepalive == 1);
        CHECK(s.idle == 77);
        CHECK(s.interval == 7);
        CHECK(s.count == 5);
        CHECK(s.user_timeout == 12345);
    }
    SECTION("keepalives off") {
        // libpq sets the TCP settings only with keepalives on: off means off.
        const libpq_connector c{sbx().tls() + " keepalives=0"};
        scoped h{c, c.connect(in(10s))};
        const tcp_settings s = settings_of(h.h);
        CHECK(s.keepalive == 0);
        CHECK(s.user_timeout == 0);
    }
}
