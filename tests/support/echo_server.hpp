#pragma once

// echo_server: a TCP server on 127.0.0.1 that sends back every byte it
// receives, for testing network machinery (fault_proxy.hpp) without a
// database. One poll() thread; it answers a FIN with a FIN once all is echoed.
// The destructor stops and joins the thread and closes every descriptor.

#include "sockets.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

namespace pqpool::test {

class echo_server {
public:
    echo_server() : listen_fd_(net::listen_loopback()), port_(net::local_port(listen_fd_)) {
        wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (wake_fd_ < 0) {
            ::close(listen_fd_);
            net::fail("eventfd");
        }
        thread_ = std::thread([this] { run(); });
    }
    echo_server(const echo_server&) = delete;
    echo_server& operator=(const echo_server&) = delete;
    ~echo_server() {
        stop_.store(true);
        const std::uint64_t one = 1;
        (void)!::write(wake_fd_, &one, sizeof one);
        thread_.join();
        ::close(listen_fd_);
        ::close(wake_fd_);
    }

    int port() const noexcept { return port_; }

private:
    static constexpr std::size_t limit = std::size_t{1} << 20; // unsent bytes before it stops reading

    struct peer {
        int fd;
        std::string pending;
        bool eof = false;
    };

    void run() {
        std::vector<peer> peers;
        std::vector<pollfd> fds;
        while (!stop_.load()) {
            fds.assign({pollfd{wake_fd_, POLLIN, 0}, pollfd{listen_fd_, POLLIN, 0}});
            for (const peer& p : peers) {
                short ev = 0;
                if (!p.eof && p.pending.size() < limit) ev |= POLLIN;
                if (!p.pending.empty()) ev |= POLLOUT;
                fds.push_back(pollfd{p.fd, ev, 0});
            }
            if (::poll(fds.data(), fds.size(), 1000) < 0) continue; // EINTR; the loop re-checks stop_
            if (fds[1].revents) {
                for (int i = 0; i < 64; ++i) {
                    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    net::set_nodelay(fd);
                    peers.push_back(peer{fd, {}});
                }
            }
            for (std::size_t i = 0; i + 2 < fds.size(); ++i) {
                if (fds[i + 2].revents) serve(peers[i]);
            }
            std::erase_if(peers, [](const peer& p) { return p.fd < 0; });
        }
        for (const peer& p : peers) ::close(p.fd);
    }

    static void serve(peer& p) {
        char buf[65536];
        for (int i = 0; i < 16 && !p.eof && p.pending.size() < limit; ++i) {
            const ssize_t n = ::recv(p.fd, buf, sizeof buf, 0);
            if (n > 0) {
                p.pending.append(buf, static_cast<std::size_t>(n));
            } else if (n == 0) {
                p.eof = true;
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            } else if (errno != EINTR) {
                net::close_reset(p.fd);
                p.fd = -1;
                return;
            }
        }
        while (!p.pending.empty()) {
            const ssize_t n = ::send(p.fd, p.pending.data(), p.pending.size(), MSG_NOSIGNAL);
            if (n > 0) {
                p.pending.erase(0, static_cast<std::size_t>(n));
            } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                break;
            } else if (n < 0 && errno != EINTR) {
                net::close_reset(p.fd);
                p.fd = -1;
                return;
            }
        }
        if (p.eof && p.pending.empty()) {
            net::close_fin(p.fd);
            p.fd = -1;
        }
    }

    int listen_fd_;
    int port_;
    int wake_fd_ = -1;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

} // namespace pqpool::test
