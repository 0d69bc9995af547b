// fork() while other threads are connecting: the child's own connect must not
// hang on a lock (OpenSSL's, GSSAPI's, the resolver's) that a connecting
// thread of the parent held at the instant of the fork.

#include "connector_support.hpp"

#include <pqpool/connector/libpq.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using namespace pqpool::test::connector;
using pqpool::libpq_connector;

namespace {

// Waits up to `limit` for the child to exit; kills it and returns false if it
// does not.
bool reaped_within(pid_t pid, std::chrono::milliseconds limit, int& status) {
    const auto end = clock_type::now() + limit;
    for (;;) {
        const pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) return true;
        if (r < 0) return false;
        if (clock_type::now() >= end) break;
        std::this_thread::sleep_for(5ms);
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    return false;
}

} // namespace

TEST_CASE("libpq_connector: a child forked while threads connect over TLS can connect itself",
          "[integration][libpq][fork]") {
    const std::string conninfo = sbx().tls();
    const libpq_connector parent_connector{conninfo};
    // Cold connects only: every one a new TLS session (SSL_CTX_new, RAND_bytes)
    // and, with gssencmode=prefer, a look for Kerberos credentials.
    std::atomic<bool> stop{false};
    std::atomic<int> connects{0};
    std::vector<std::thread> connecting;
    for (int t = 0; t < 4; ++t)
        connecting.emplace_back([&] {
            while (!stop.load()) {
                try {
                    parent_connector.close(parent_connector.connect(in(10s)));
                    connects.fetch_add(1);
                } catch (const std::exception&) {
                    // Counted below: the parent's connects must keep working too.
                }
            }
        });
    while (connects.load() < 2) std::this_thread::sleep_for(1ms);

    // The window is narrow (a connecting thread is inside such a lock for a
    // fraction of a millisecond per connect), so many forks: in batches whose
    // children connect side by side, to keep the test short.
    constexpr int batches = 10, per_batch = 16, forks = batches * per_batch;
    int hung = 0, failed = 0;
    for (int b = 0; b < batches; ++b) {
        std::vector<pid_t> children;
        for (int i = 0; i < per_batch; ++i) {
            std::fflush(nullptr); // nothing buffered for the child to print twice
            const pid_t pid = ::fork();
            REQUIRE(pid >= 0);
            if (pid == 0) {
                int code = 1;
                try {
                    const libpq_connector child_connector{conninfo};
                    PGconn* h = child_connector.connect(in(5s));
                    code = PQstatus(h) == CONNECTION_OK ? 0 : 1;
                    child_connector.close(h);
                } catch (...) {
                    code = 2;
                }
                ::_exit(code);
            }
            children.push_back(pid);
            std::this_thread::sleep_for(std::chrono::milliseconds{i % 3}); // vary the phase against the connects
        }
        // A child bounds its connect to 5 s; one still there after 20 s hangs.
        const auto end = clock_type::now() + 20s;
        for (const pid_t pid : children) {
            int status = 0;
            if (!reaped_within(pid, std::chrono::duration_cast<std::chrono::milliseconds>(end - clock_type::now()),
                               status))
                ++hung;
            else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                ++failed;
        }
    }
    stop = true;
    for (auto& t : connecting) t.join();
    CAPTURE(forks, connects.load(), hung, failed);
    CHECK(hung == 0);
    CHECK(failed == 0);
    CHECK(connects.load() >= batches); // the parent kept connecting throughout
}
