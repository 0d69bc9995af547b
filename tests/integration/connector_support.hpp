#pragma once

// Helpers shared by the libpq connector's integration tests: the sandbox's
// conninfo variants, a handle closed at scope exit, local sockets that refuse
// or never answer, a TCP proxy that can go silent, and a plain side
// connection for checks.

#include "catch.hpp"
#include "pg.hpp"
#include "sandbox.hpp"

#include <pqpool/connector/libpq.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

namespace pqpool::test::connector {

using namespace std::chrono_literals;
using clock_type = libpq_connector::clock;

inline const sandbox& sbx() { return sandbox::get(); }

inline clock_type::time_point in(std::chrono::milliseconds d) { return clock_type::now() + d; }

// A side connection for checks and for killing backends; plain TCP, blocking.
struct admin_conn {
    PGconn* c;
    admin_conn() : c(PQconnectdb(sbx().plain().c_str())) {
        if (PQstatus(c) != CONNECTION_OK) throw std::runtime_error(std::string("admin connect: ") + PQerrorMessage(c));
    }
    ~admin_conn() { PQfinish(c); }
    admin_conn(const admin_conn&) = delete;
    admin_conn& operator=(const admin_conn&) = delete;
};

inline bool exec_ok(PGconn* c, const std::string& sql) {
    std::unique_ptr<PGresult, decltype(&PQclear)> r{PQexec(c, sql.c_str()), &PQclear};
    const auto st = PQresultStatus(r.get());
    return st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK;
}

// Closes the handle at scope exit unless it was given up.
struct scoped {
    const libpq_connector& c;
    PGconn* h;
    scoped(const libpq_connector& connector, PGconn* handle) : c(connector), h(handle) {}
    ~scoped() { c.close(h); }
    scoped(const scoped&) = delete;
    scoped& operator=(const scoped&) = delete;
    PGconn* release() { return std::exchange(h, nullptr); }
};

inline std::string percent_encode(const std::string& s) {
    static const char hex[] = "0123456789ABCDEF";
    std::string out;
    for (unsigned char ch : s) {
        if (std::isalnum(ch) || ch == '-' || ch == '_' || ch == '.' || ch == '~') {
            out += static_cast<char>(ch);
        } else {
            out += '%';
            out += hex[ch >> 4];
            out += hex[ch & 15];
        }
    }
    return out;
}

inline std::string password_uri(const std::string& password) {
    return "postgresql://" + sbx().var("PQPOOL_TEST_PASSWORD_USER") + ":" + percent_encode(password) + "@" +
           sbx().var("PQPOOL_TEST_HOST") + ":" + sbx().var("PQPOOL_TEST_PORT") + "/" + sbx().var("PQPOOL_TEST_DBNAME") +
           "?sslmode=require";
}

inline std::string plain_with_db(const std::string& dbname) {
    return "host=" + sbx().var("PQPOOL_TEST_HOST") + " port=" + sbx().var("PQPOOL_TEST_PORT") + " dbname=" + dbname +
           " user=" + sbx().var("PQPOOL_TEST_USER") + " sslmode=disable";
}

// A TCP socket on 127.0.0.1 with a kernel-chosen port; listening or not.
struct local_socket {
    int fd = -1;
    int port = 0;
    explicit local_socket(bool listening) {
        fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) throw std::runtime_error("socket() failed");
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = 0;
        if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("bind() failed");
        socklen_t len = sizeof a;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
        port = ntohs(a.sin_port);
        if (listening && ::listen(fd, 8) != 0) throw std::runtime_error("listen() failed");
    }
    ~local_socket() { close(); }
    void close() {
        if (fd >= 0) ::close(fd);
        fd = -1;
    }
    local_socket(const local_socket&) = delete;
    local_socket& operator=(const local_socket&) = delete;
};

// A TCP proxy to the server that can be told to stop forwarding, in both
// directions, without closing anything: a network path gone silent.
class stall_proxy {
public:
    explicit stall_proxy(int upstream_port) : upstream_port_(upstream_port), thread_([this] { run(); }) {}
    ~stall_proxy() {
        stop_ = true;
        thread_.join();
    }
    stall_proxy(const stall_proxy&) = delete;
    stall_proxy& operator=(const stall_proxy&) = delete;
    int port() const { return listener_.port; }
    void stall() { stalled_ = true; }
    void unstall() { stalled_ = false; }

private:
    void run() {
        int client = -1, server = -1;
        while (!stop_) {
            if (client < 0) {
                pollfd p{listener_.fd, POLLIN, 0};
                if (::poll(&p, 1, 20) != 1) continue;
                client = ::accept4(listener_.fd, nullptr, nullptr, SOCK_CLOEXEC);
                server = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                sockaddr_in a{};
                a.sin_family = AF_INET;
                a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                a.sin_port = htons(static_cast<std::uint16_t>(upstream_port_));
                if (client < 0 || ::connect(server, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) break;
                continue;
            }
            if (stalled_) {
                std::this_thread::sleep_for(std::chrono::milliseconds{5});
                continue;
            }
            pollfd p[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
            if (::poll(p, 2, 20) <= 0) continue;
            bool closed = false;
            for (int i = 0; i < 2; ++i) {
                if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
                char buf[16384];
                const ssize_t n = ::read(p[i].fd, buf, sizeof buf);
                if (n <= 0 || ::send(p[1 - i].fd, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL) != n) closed = true;
            }
            if (closed) break;
        }
        while (!stop_)
            std::this_thread::sleep_for(std::chrono::milliseconds{5}); // keep the sockets open until the test is done
        if (client >= 0) ::close(client);
        if (server >= 0) ::close(server);
    }

    local_socket listener_{true};
    int upstream_port_;
    std::atomic<bool> stop_{false}, stalled_{false};
    std::thread thread_;
};

// Plain TCP to 127.0.0.1:port with the sandbox's database and user.
inline std::string local_conninfo(int port) {
    return "host=127.0.0.1 port=" + std::to_string(port) + " dbname=" + sbx().var("PQPOOL_TEST_DBNAME") +
           " user=" + sbx().var("PQPOOL_TEST_USER") + " sslmode=disable";
}

// Is `word` in `text` as a whole token (not inside a longer run of letters,
// digits and '_')?
inline bool has_token(const std::string& text, const std::string& word) {
    auto part = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
    for (std::size_t at = text.find(word); at != std::string::npos; at = text.find(word, at + 1)) {
        const std::size_t end = at + word.size();
        if ((at == 0 || !part(text[at - 1])) && (end >= text.size() || !part(text[end]))) return true;
    }
    return false;
}

} // namespace pqpool::test::connector
