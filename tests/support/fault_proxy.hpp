#pragma once

// fault_proxy: a TCP proxy that injects network faults on demand, for tests.
//
//     pqpool::test::fault_proxy proxy{server_port};          // listens on 127.0.0.1:proxy.port()
//     PGconn* c = PQconnectdb(proxy.route(conninfo).c_str()); // goes through it
//     proxy.freeze();  // ...a query on c now waits forever
//     proxy.heal();    // ...and completes
//
// Faults, for every open connection and each new one (until the next call), or
// for one connection (by the id `connection_of` gives):
//   pass / heal()  forward both ways (heal also ends blackhole and delay; it
//                  forwards at once what a delay still holds);
//   freeze         keep both sockets open, read nothing, forward nothing: the
//                  peers' kernels still ACK, their send buffers fill up;
//   reset          an RST to both sides (SO_LINGER 0, close); new connections
//                  are reset as soon as they are accepted;
//   close          a FIN to both sides; new connections are closed at once;
//   delay(d)       forward each chunk d after it was read, both ways;
//   blackhole      (new connections only) accept, never answer, never connect
//                  to the target; open connections go on as they were. A
//                  blackholed connection stays so after heal() (its client
//                  times out by itself); it closes when its client does.
//   refuse_new()   (new connections only, for good) stop listening: a connect
//                  to the proxy's port is refused by the kernel (RST to the
//                  SYN, ECONNREFUSED: nothing is sent on it), while open
//                  connections go on under the other controls. heal() does
//                  not undo it (the port is released and may be reused).
//                  Unlike reset, whose new connections are accepted first,
//                  so a client's first write may still succeed.
//
// Each control call returns once the proxy's thread has applied it: after
// freeze() returns, not one more byte is forwarded; after reset() returns the
// RSTs are sent. Controls are thread-safe; a per-connection control on a
// connection that is gone throws. One poll() thread does all the I/O; the
// destructor stops it, joins it, and closes every descriptor it opened.
// IPv4 only; the proxy listens on 127.0.0.1.

#include "sockets.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace pqpool::test {

class fault_proxy {
public:
    using clock = std::chrono::steady_clock;
    using connection_id = std::uint64_t;

    // Forwards to target_address:target_port (a numeric IPv4 address).
    explicit fault_proxy(int target_port, const std::string& target_address = "127.0.0.1") {
        target_ = net::loopback(target_port);
        if (::inet_pton(AF_INET, target_address.c_str(), &target_.sin_addr) != 1)
            throw std::invalid_argument("fault_proxy: not a numeric IPv4 address: " + target_address);
        listen_fd_ = net::listen_loopback();
        wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (wake_fd_ < 0) {
            ::close(listen_fd_);
            net::fail("eventfd");
        }
        try {
            port_ = net::local_port(listen_fd_);
            thread_ = std::thread([this] { run(); });
        } catch (...) {
            ::close(listen_fd_);
            ::close(wake_fd_);
            throw;
        }
    }
    fault_proxy(const fault_proxy&) = delete;
    fault_proxy& operator=(const fault_proxy&) = delete;

    ~fault_proxy() {
        {
            std::lock_guard lk(mu_);
            stop_ = true;
        }
        wake();
        thread_.join();
        if (listen_fd_ >= 0) ::close(listen_fd_);
        ::close(wake_fd_);
    }

    // The port the proxy listens on (127.0.0.1).
    int port() const noexcept { return port_; }

    // `conninfo` (key=value form, one host) sent through the proxy: hostaddr and
    // port are overridden, host is kept (so sslmode=verify-full still checks it).
    std::string route(const std::string& conninfo) const {
        return conninfo + " hostaddr=127.0.0.1 port=" + std::to_string(port_);
    }

    // --- every open connection, and each new one until the next such call
    void heal() { submit(op::pass); }
    void pass() { submit(op::pass); }
    void freeze() { submit(op::freeze); }
    void reset() { submit(op::reset); }
    void close() { submit(op::close); }
    void delay(std::chrono::milliseconds d) { submit(op::delay, std::nullopt, checked(d)); }
    void blackhole() { submit(op::blackhole); }
    void refuse_new() { submit(op::refuse_new); }

    // --- one open connection
    void pass(connection_id id) { submit(op::pass, id); }
    void freeze(connection_id id) { submit(op::freeze, id); }
    void reset(connection_id id) { submit(op::reset, id); }
    void close(connection_id id) { submit(op::close, id); }
    void delay(connection_id id, std::chrono::milliseconds d) { submit(op::delay, id, checked(d)); }

    // The id of the open connection whose client holds `client_fd` (e.g.
    // PQsocket(conn)), matched by its port; waits up to `wait` for the proxy to
    // accept it. Throws if there is none.
    connection_id connection_of(int client_fd, std::chrono::milliseconds wait = std::chrono::seconds{2}) const {
        const int port = net::local_port(client_fd);
        std::unique_lock lk(mu_);
        std::optional<connection_id> found;
        cv_.wait_for(lk, wait, [&] {
            for (const auto& [id, p] : open_)
                if (p == port) found = id;
            return found.has_value() || !running_;
        });
        if (!found)
            throw std::runtime_error("fault_proxy: no open connection from client port " + std::to_string(port));
        return *found;
    }

    // Client connections open now (frozen and blackholed ones included).
    std::size_t connections() const {
        std::lock_guard lk(mu_);
        return open_.size();
    }
    // Connections accepted since construction (reset and closed ones included).
    std::uint64_t accepted() const {
        std::lock_guard lk(mu_);
        return accepted_;
    }
    // Waits up to `timeout` until exactly `n` connections are open.
    bool wait_for_connections(std::size_t n, std::chrono::milliseconds timeout) const {
        std::unique_lock lk(mu_);
        return cv_.wait_for(lk, timeout, [&] { return open_.size() == n; });
    }

private:
    enum class op : unsigned char { pass, freeze, delay, reset, close, blackhole, refuse_new };
    enum class mode : unsigned char { pass, freeze, delay, blackhole };
    static constexpr std::size_t queue_limit = std::size_t{1} << 20; // per direction: stop reading beyond

    struct command {
        op what;
        std::optional<connection_id> id;
        std::chrono::milliseconds d;
        bool done = false;
        std::string error;
    };
    struct chunk {
        clock::time_point due;
        std::string bytes;
        std::size_t sent = 0;
    };
    struct endpoint {
        int fd = -1;
        std::deque<chunk> out; // bytes on their way to this endpoint
        std::size_t queued = 0;
        bool eof = false;        // it sent its FIN
        bool shut = false;       // we sent it ours
        bool want_write = false; // its socket was full: wait for POLLOUT
    };
    struct connection {
        int client_port = 0;
        endpoint client, upstream;
        bool connecting = false; // upstream connect() in progress
        bool dead = false;
        mode m = mode::pass;
        std::chrono::milliseconds d{0};
    };

    static std::chrono::milliseconds checked(std::chrono::milliseconds d) {
        if (d.count() < 0) throw std::invalid_argument("fault_proxy: a negative delay");
        return d;
    }

    void wake() const noexcept {
        const std::uint64_t one = 1;
        (void)!::write(wake_fd_, &one, sizeof one);
    }

    void submit(op what, std::optional<connection_id> id = std::nullopt, std::chrono::milliseconds d = {}) {
        auto cmd = std::make_shared<command>(command{what, id, d, false, {}});
        std::unique_lock lk(mu_);
        if (!running_) throw std::runtime_error("fault_proxy: its thread has stopped: " + failed_);
        pending_.push_back(cmd);
        wake();
        if (!cv_.wait_for(lk, std::chrono::seconds{10}, [&] { return cmd->done; }))
            throw std::runtime_error("fault_proxy: its thread did not apply a control within 10 s");
        if (!cmd->error.empty()) throw std::runtime_error(cmd->error);
    }

    // --- the proxy's thread: everything below touches conns_ and runs only there

    void run() noexcept {
        try {
            loop();
        } catch (const std::exception& e) {
            std::lock_guard lk(mu_);
            failed_ = e.what();
        }
        for (auto& [id, c] : conns_) {
            if (c.client.fd >= 0) ::close(c.client.fd);
            if (c.upstream.fd >= 0) ::close(c.upstream.fd);
        }
        conns_.clear();
        {
            std::lock_guard lk(mu_);
            running_ = false;
            if (failed_.empty()) failed_ = "the proxy was destroyed";
            for (auto& cmd : pending_) {
                cmd->done = true;
                cmd->error = "fault_proxy: " + failed_;
            }
            pending_.clear();
            open_.clear();
        }
        cv_.notify_all();
    }

    void loop() {
        std::vector<pollfd> fds;
        std::vector<std::pair<connection_id, bool>> who; // per fds[i + 2]: connection, is-upstream
        for (;;) {
            fds.assign({pollfd{wake_fd_, POLLIN, 0}, pollfd{listen_fd_, POLLIN, 0}});
            who.clear();
            auto now = clock::now();
            std::optional<clock::time_point> next_due;
            for (auto& [id, c] : conns_) watch(id, c, now, fds, who, next_due);
            int timeout_ms = 1000;
            if (next_due) {
                const auto left = std::chrono::ceil<std::chrono::milliseconds>(*next_due - now).count();
                timeout_ms = static_cast<int>(std::clamp<long long>(left, 0, 1000));
            }
            if (::poll(fds.data(), fds.size(), timeout_ms) < 0) {
                if (errno == EINTR) continue;
                net::fail("fault_proxy: poll");
            }
            if (fds[0].revents) {
                std::uint64_t v;
                (void)!::read(wake_fd_, &v, sizeof v);
            }
            std::vector<std::shared_ptr<command>> cmds;
            {
                std::lock_guard lk(mu_);
                if (stop_) return;
                cmds.swap(pending_);
            }
            bool changed = !cmds.empty();
            for (auto& cmd : cmds) apply(*cmd);
            if (fds[1].revents && listen_fd_ >= 0) changed |= accept_new(); // refuse_new may have closed it
            now = clock::now();
            for (std::size_t i = 2; i < fds.size(); ++i) {
                if (!fds[i].revents) continue;
                auto it = conns_.find(who[i - 2].first);
                if (it != conns_.end() && !it->second.dead)
                    on_event(it->second, who[i - 2].second, fds[i].revents, now);
            }
            for (auto& [id, c] : conns_) pump(c, clock::now());
            for (auto it = conns_.begin(); it != conns_.end();) {
                if (it->second.dead) {
                    it = conns_.erase(it);
                    changed = true;
                } else {
                    ++it;
                }
            }
            if (changed) publish(cmds);
        }
    }

    void publish(const std::vector<std::shared_ptr<command>>& cmds) {
        {
            std::lock_guard lk(mu_);
            open_.clear();
            for (const auto& [id, c] : conns_) open_.emplace(id, c.client_port);
            accepted_ = accepted_local_;
            for (const auto& cmd : cmds) cmd->done = true;
        }
        cv_.notify_all();
    }

    static void due_of(const endpoint& e, clock::time_point now, std::optional<clock::time_point>& next) {
        if (e.out.empty() || e.want_write) return;
        const auto due = std::max(e.out.front().due, now);
        if (!next || due < *next) next = due;
    }

    void watch(connection_id id, connection& c, clock::time_point now, std::vector<pollfd>& fds,
               std::vector<std::pair<connection_id, bool>>& who, std::optional<clock::time_point>& next_due) const {
        auto add = [&](int fd, short events, bool upstream) {
            if (events == 0) return;
            fds.push_back(pollfd{fd, events, 0});
            who.emplace_back(id, upstream);
        };
        switch (c.m) {
        case mode::freeze: return; // not even errors: nothing is read, nothing forwarded
        case mode::blackhole: add(c.client.fd, POLLRDHUP, false); return;
        case mode::pass:
        case mode::delay: break;
        }
        short ev = 0;
        if (!c.client.eof && c.upstream.queued < queue_limit) ev |= POLLIN;
        if (c.client.want_write) ev |= POLLOUT;
        add(c.client.fd, ev, false);
        if (c.connecting) {
            add(c.upstream.fd, POLLOUT, true);
        } else {
            ev = 0;
            if (!c.upstream.eof && c.client.queued < queue_limit) ev |= POLLIN;
            if (c.upstream.want_write) ev |= POLLOUT;
            add(c.upstream.fd, ev, true);
            due_of(c.upstream, now, next_due);
        }
        due_of(c.client, now, next_due);
    }

    // Closes both sockets with an RST (abort) or a FIN.
    static void end(connection& c, bool abort) noexcept {
        for (endpoint* e : {&c.client, &c.upstream}) {
            if (e->fd < 0) continue;
            if (abort)
                net::close_reset(e->fd);
            else
                net::close_fin(e->fd);
            e->fd = -1;
        }
        c.dead = true;
    }

    static void set_mode(connection& c, mode m, std::chrono::milliseconds d, clock::time_point now) {
        c.m = m;
        c.d = d;
        if (m == mode::pass) // what a delay still holds goes out now
            for (endpoint* e : {&c.client, &c.upstream})
                for (chunk& k : e->out) k.due = std::min(k.due, now);
    }

    void apply(command& cmd) {
        const auto now = clock::now();
        const mode m = cmd.what == op::freeze ? mode::freeze : cmd.what == op::delay ? mode::delay : mode::pass;
        const std::chrono::milliseconds d = cmd.what == op::delay ? cmd.d : std::chrono::milliseconds{0};
        if (cmd.id) {
            auto it = conns_.find(*cmd.id);
            if (it == conns_.end() || it->second.dead) {
                cmd.error = "fault_proxy: no open connection #" + std::to_string(*cmd.id);
                return;
            }
            connection& c = it->second;
            if (cmd.what == op::reset || cmd.what == op::close) {
                end(c, cmd.what == op::reset);
            } else if (c.m == mode::blackhole) {
                cmd.error = "fault_proxy: connection #" + std::to_string(*cmd.id) + " is blackholed";
            } else {
                set_mode(c, m, d, now);
            }
            return;
        }
        switch (cmd.what) {
        case op::refuse_new: // the listener closes; nothing else changes
            if (listen_fd_ >= 0) ::close(listen_fd_);
            listen_fd_ = -1;
            return;
        case op::reset:
        case op::close:
            for (auto& [id, c] : conns_) end(c, cmd.what == op::reset);
            break;
        case op::blackhole: break;
        case op::pass:
        case op::freeze:
        case op::delay:
            for (auto& [id, c] : conns_)
                if (c.m != mode::blackhole) set_mode(c, m, d, now);
            break;
        }
        new_op_ = cmd.what;
        new_delay_ = d;
    }

    bool accept_new() {
        bool any = false;
        for (int i = 0; i < 64; ++i) {
            sockaddr_in peer{};
            socklen_t len = sizeof peer;
            const int fd =
                ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                net::fail("fault_proxy: accept");
            }
            any = true;
            ++accepted_local_;
            if (new_op_ == op::reset) {
                net::close_reset(fd);
                continue;
            }
            if (new_op_ == op::close) {
                net::close_fin(fd);
                continue;
            }
            connection c;
            c.client.fd = fd;
            c.client_port = ntohs(peer.sin_port);
            net::set_nodelay(fd);
            if (new_op_ == op::blackhole) {
                c.m = mode::blackhole;
            } else {
                c.m = new_op_ == op::freeze ? mode::freeze : new_op_ == op::delay ? mode::delay : mode::pass;
                c.d = new_delay_;
                c.upstream.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                if (c.upstream.fd < 0) {
                    net::close_reset(fd);
                    continue;
                }
                net::set_nodelay(c.upstream.fd);
                if (::connect(c.upstream.fd, reinterpret_cast<const sockaddr*>(&target_), sizeof target_) != 0) {
                    if (errno != EINPROGRESS) {
                        end(c, true);
                        continue;
                    }
                    c.connecting = true;
                }
            }
            conns_.emplace(next_id_++, std::move(c));
        }
        return any;
    }

    void on_event(connection& c, bool upstream, short revents, clock::time_point now) {
        if (c.m == mode::freeze) return;
        if (c.m == mode::blackhole) { // its client went away
            end(c, false);
            return;
        }
        if (upstream && c.connecting) {
            int err = 0;
            socklen_t len = sizeof err;
            if (::getsockopt(c.upstream.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
                end(c, true); // the target refused: so does the proxy
                return;
            }
            c.connecting = false;
            return;
        }
        endpoint& from = upstream ? c.upstream : c.client;
        endpoint& to = upstream ? c.client : c.upstream;
        if (revents & (POLLOUT | POLLHUP | POLLERR)) from.want_write = false; // the next send says which
        if (!(revents & (POLLIN | POLLHUP | POLLERR)) || from.eof) return;
        char buf[65536];
        for (int i = 0; i < 16 && to.queued < queue_limit; ++i) {
            const ssize_t n = ::recv(from.fd, buf, sizeof buf, 0);
            if (n > 0) {
                to.out.push_back(chunk{now + c.d, std::string(buf, static_cast<std::size_t>(n))});
                to.queued += static_cast<std::size_t>(n);
            } else if (n == 0) {
                from.eof = true;
                return;
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return;
            } else if (errno != EINTR) {
                end(c, true); // one side reset: so does the other
                return;
            }
        }
    }

    // Writes what is due on both sides; passes FINs on once all before them is written.
    static void pump(connection& c, clock::time_point now) {
        if (c.dead || c.m == mode::freeze || c.m == mode::blackhole) return;
        for (bool to_upstream : {false, true}) {
            if (to_upstream && c.connecting) continue;
            endpoint& e = to_upstream ? c.upstream : c.client;
            const endpoint& other = to_upstream ? c.client : c.upstream;
            while (!e.out.empty() && !e.want_write && e.out.front().due <= now) {
                chunk& k = e.out.front();
                const ssize_t n = ::send(e.fd, k.bytes.data() + k.sent, k.bytes.size() - k.sent, MSG_NOSIGNAL);
                if (n > 0) {
                    k.sent += static_cast<std::size_t>(n);
                    e.queued -= static_cast<std::size_t>(n);
                    if (k.sent == k.bytes.size()) e.out.pop_front();
                } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                    e.want_write = true;
                } else if (n < 0 && errno != EINTR) {
                    end(c, true);
                    return;
                }
            }
            if (e.out.empty() && other.eof && !e.shut) {
                (void)::shutdown(e.fd, SHUT_WR);
                e.shut = true;
            }
        }
        if (c.client.shut && c.upstream.shut) end(c, false); // both FINs passed on: done
    }

    // Shared with the controls, under mu_.
    mutable std::mutex mu_;
    mutable std::condition_variable cv_;
    std::vector<std::shared_ptr<command>> pending_;
    std::map<connection_id, int> open_; // id -> client port, as of the thread's last publish
    std::uint64_t accepted_ = 0;
    bool stop_ = false;
    bool running_ = true;
    std::string failed_;

    // Set before the thread starts, constant after (but listen_fd_, which only
    // the thread closes, on refuse_new: -1 after, which poll() skips).
    sockaddr_in target_{};
    int listen_fd_ = -1;
    int wake_fd_ = -1;
    int port_ = 0;

    // The thread's own.
    std::map<connection_id, connection> conns_;
    op new_op_ = op::pass;
    std::chrono::milliseconds new_delay_{0};
    connection_id next_id_ = 1;
    std::uint64_t accepted_local_ = 0;

    std::thread thread_;
};

} // namespace pqpool::test
