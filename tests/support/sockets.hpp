#pragma once

// Small POSIX socket helpers for the tests' own TCP machinery (fault_proxy.hpp,
// echo_server.hpp) and for tests that talk to it: IPv4 loopback only. Every
// descriptor is opened close-on-exec. Failures throw std::system_error.

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <system_error>

namespace pqpool::test::net {

[[noreturn]] inline void fail(const std::string& what, int err = errno) {
    throw std::system_error(err, std::generic_category(), what);
}

inline void set_nonblocking(int fd) {
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) fail("fcntl(O_NONBLOCK)");
}

// Small writes go out at once (the delay fault measures latency, not Nagle).
inline void set_nodelay(int fd) noexcept {
    int one = 1;
    (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

inline sockaddr_in loopback(int port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

// The local port of a socket (for a client socket: the port the server sees as its peer's).
inline int local_port(int fd) {
    sockaddr_in a{};
    socklen_t len = sizeof a;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) fail("getsockname");
    if (a.sin_family != AF_INET) throw std::runtime_error("local_port: not an IPv4 socket");
    return ntohs(a.sin_port);
}

// A non-blocking listening socket on 127.0.0.1 and an ephemeral port.
inline int listen_loopback(int backlog = 128) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) fail("socket");
    const sockaddr_in a = loopback(0);
    if (::bind(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, backlog) != 0) {
        const int err = errno;
        ::close(fd);
        fail("bind/listen on 127.0.0.1", err);
    }
    return fd;
}

// A loopback port nothing listens on (bound, then closed): a connect there is refused at once.
inline int closed_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) fail("socket");
    const sockaddr_in a = loopback(0);
    if (::bind(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) {
        const int err = errno;
        ::close(fd);
        fail("bind on 127.0.0.1", err);
    }
    const int port = local_port(fd);
    ::close(fd);
    return port;
}

// A blocking client socket connected to 127.0.0.1:port (TCP_NODELAY on).
inline int connect_loopback(int port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) fail("socket");
    const sockaddr_in a = loopback(port);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) {
        const int err = errno;
        ::close(fd);
        fail("connect to 127.0.0.1:" + std::to_string(port), err);
    }
    set_nodelay(fd);
    return fd;
}

// Closes with an RST instead of a FIN (SO_LINGER with a zero timeout).
inline void close_reset(int fd) noexcept {
    linger l{};
    l.l_onoff = 1;
    l.l_linger = 0;
    (void)::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    ::close(fd);
}

// Closes with a FIN. Linux answers close() with an RST when received data is
// still unread, so the FIN goes first (shutdown) and what has arrived is drained.
inline void close_fin(int fd) noexcept {
    (void)::shutdown(fd, SHUT_WR);
    char buf[4096];
    for (int i = 0; i < 256; ++i) { // at most 1 MiB; the rest, if any, gets the RST after the FIN
        if (::recv(fd, buf, sizeof buf, MSG_DONTWAIT) <= 0) break;
    }
    ::close(fd);
}

// Waits up to `timeout` for `events` on `fd`; the revents (0 on timeout).
inline short wait_for(int fd, short events, std::chrono::milliseconds timeout) {
    pollfd p{fd, events, 0};
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        const int n = ::poll(&p, 1, static_cast<int>(left.count() > 0 ? left.count() : 0));
        if (n > 0) return p.revents;
        if (n == 0) return 0;
        if (errno != EINTR) fail("poll");
    }
}

// The number of descriptors this process has open.
inline std::size_t open_fd_count() {
    DIR* d = ::opendir("/proc/self/fd");
    if (!d) fail("opendir /proc/self/fd");
    std::size_t n = 0;
    while (const dirent* e = ::readdir(d))
        if (e->d_name[0] != '.') ++n;
    ::closedir(d);
    return n - 1; // the directory stream's own descriptor
}

} // namespace pqpool::test::net
