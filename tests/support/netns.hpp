#pragma once

// Real packet loss for tests that run inside a private network namespace with a
// PostgreSQL of their own (CTest runs them through scripts/netns-run):
//
//     namespace netns = pqpool::test::netns;
//     PGconn* c = PQconnectdb((netns::conninfo() + " tcp_user_timeout=2000").c_str());
//     {
//         netns::dropped_port cut{netns::server_port()}; // every packet to or from it is lost
//         ...                                            // the path is dead: nothing ACKs
//     }                                                  // healed, even when a CHECK threw
//
// Unlike fault_proxy's freeze, no kernel on the path answers: the peers see
// what a dead network shows (retransmissions, unanswered keepalives). The rules
// are nft rules in a table of their own (inet pqpool_test) on the input hook,
// so packets are lost between the two stacks as on a wire, after the sender's
// stack has sent them.
//
// Every function here first checks that the process is in a private network
// namespace and throws if not: run by mistake on the host, a test fails and
// never touches the host's firewall.

#include "sandbox.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>

extern char** environ;

namespace pqpool::test::netns {

namespace detail {

inline std::string ns_of(const char* path) {
    char buf[128];
    const ssize_t n = ::readlink(path, buf, sizeof buf);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

// Runs `nft <script>`; throws with nft's output when it fails. Bounded: nft is
// killed after 10 s.
inline void nft(const std::string& script) {
    const char* exe = ::access("/usr/sbin/nft", X_OK) == 0 ? "/usr/sbin/nft" : "nft";
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, out[1], 2);
    std::string arg0 = "nft", arg1 = script;
    char* argv[] = {arg0.data(), arg1.data(), nullptr};
    pid_t pid = -1;
    const int err = ::posix_spawnp(&pid, exe, &fa, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(out[1]);
    if (err != 0) {
        ::close(out[0]);
        throw std::system_error(err, std::generic_category(), "netns: cannot run nft (is nftables installed?)");
    }
    std::string output;
    char buf[512];
    for (ssize_t n; (n = ::read(out[0], buf, sizeof buf)) != 0;) { // EOF when nft exits
        if (n > 0)
            output.append(buf, static_cast<std::size_t>(n));
        else if (errno != EINTR)
            break;
    }
    ::close(out[0]);
    int status = 0;
    for (int i = 0; i < 1000; ++i) { // 10 s
        const pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) break;
        if (r < 0 && errno != EINTR) throw std::system_error(errno, std::generic_category(), "waitpid(nft)");
        if (i == 999) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            throw std::runtime_error("netns: nft did not finish within 10 s: nft '" + script + "'");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds{10});
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        throw std::runtime_error("netns: nft failed: nft '" + script + "': " + output);
}

inline constexpr const char* table = "inet pqpool_test";

} // namespace detail

// Throws unless this process runs in a network namespace other than the one it
// was started from by scripts/netns-run (PQPOOL_NETNS_OUTER) and other than
// pid 1's.
inline void require_private() {
    const std::string self = detail::ns_of("/proc/self/ns/net");
    const char* outer = std::getenv("PQPOOL_NETNS_OUTER");
    const std::string init = detail::ns_of("/proc/1/ns/net");
    if (self.empty()) throw std::runtime_error("netns: cannot read /proc/self/ns/net");
    if (!outer || !*outer)
        throw std::runtime_error("netns: not in a private network namespace made by scripts/netns-run "
                                 "(PQPOOL_NETNS_OUTER is not set); run this test through ctest or scripts/netns-run");
    if (self == outer || self == init)
        throw std::runtime_error("netns: not in a private network namespace (this process is in " + self +
                                 ", the namespace it should have left); run it through scripts/netns-run");
}

// The in-namespace server's TCP port (127.0.0.1).
inline int server_port() {
    require_private();
    return std::stoi(sandbox::get().var("PQPOOL_TEST_PORT"));
}

// The in-namespace server: TLS (sslmode=require) over 127.0.0.1, superuser
// role pqpool, database pqpool. Append settings to it ("... keepalives=1").
inline std::string conninfo() {
    require_private();
    return sandbox::get().tls();
}

// From now on every TCP packet to or from `port` is lost, both ways, on every
// address. Adding the same port twice is harmless.
inline void drop_port(int port) {
    require_private();
    if (port <= 0 || port > 65535) throw std::invalid_argument("netns: no such port: " + std::to_string(port));
    const std::string t = detail::table, p = std::to_string(port);
    detail::nft("add table " + t + "; add chain " + t +
                " input { type filter hook input priority 0; policy accept; }; add rule " + t + " input tcp dport " +
                p + " drop; add rule " + t + " input tcp sport " + p + " drop");
}

// Removes every drop rule; idempotent (one atomic nft batch).
inline void heal() {
    require_private();
    const std::string t = detail::table;
    detail::nft("add table " + t + "; delete table " + t);
}

// Drops `port` for its lifetime; heals on destruction (also when a test
// failed), reporting a failed heal on stderr.
class dropped_port {
public:
    explicit dropped_port(int port) { drop_port(port); }
    dropped_port(const dropped_port&) = delete;
    dropped_port& operator=(const dropped_port&) = delete;
    ~dropped_port() {
        try {
            netns::heal();
        } catch (const std::exception& e) {
            std::fprintf(stderr, "netns: could not heal: %s\n", e.what());
        }
    }
    // Heals now (the destructor's heal then does nothing).
    void heal() { netns::heal(); }
};

} // namespace pqpool::test::netns
