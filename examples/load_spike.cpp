// A traffic spike: 40 requests at once, each holding its connection for 50 ms, against a
// pool that keeps 4 connections and opens up to 4 more under load (overflow::bounded, as
// SQLAlchemy's pool_size + max_overflow). The server never sees more than 8 connections from
// it: requests beyond that wait in line, first come first served, for at most 5 s (a request
// that cannot wait that long says so with timeout_error instead of piling up), and the
// overflow connections close as soon as the spike has passed. Prints the pool's stats.
// Usage: load_spike "<conninfo>"
#include <pqpool/pqpool.hpp>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

int main(int argc, char** argv) {
    auto pool = pqpool::make_pool(argc > 1 ? argv[1] : "host=localhost sslmode=require",
                                  pqpool::overflow::bounded{.size = 4, .max_overflow = 4, .wait = 5s},
                                  pqpool::observability::counters{});
    constexpr int requests = 40;
    std::atomic<int> succeeded{0};
    std::atomic<bool> spike_over{false};
    pqpool::pool_stats busiest{};

    // Watches the pool during the spike; one caller with a short wait shows the timeout.
    std::string short_wait = "never got to ask";
    std::thread watcher([&] {
        bool asked = false;
        while (!spike_over.load()) {
            const pqpool::pool_stats s = pool.stats();
            busiest.size = std::max(busiest.size, s.size);
            busiest.overflow = std::max(busiest.overflow, s.overflow);
            busiest.waiting = std::max(busiest.waiting, s.waiting);
            if (!asked && s.waiting > 4) { // in line behind at least 4 callers, each 50 ms away
                asked = true;
                try {
                    (void)pool.acquire_for(10ms);
                    short_wait = "got a connection";
                } catch (const pqpool::timeout_error& e) {
                    short_wait = e.what();
                }
            }
            std::this_thread::sleep_for(1ms);
        }
    });

    std::vector<std::thread> clients;
    for (int i = 0; i < requests; ++i)
        clients.emplace_back([&] {
            try {
                auto conn = pool.acquire();
                PGresult* r = PQexec(conn.get(), "SELECT pg_sleep(0.05)");
                if (PQresultStatus(r) == PGRES_TUPLES_OK) ++succeeded;
                PQclear(r);
            } catch (const pqpool::error& e) {
                std::printf("a request failed: %s\n", e.what());
            }
        });
    for (auto& t : clients) t.join();
    spike_over = true;
    watcher.join();

    const pqpool::pool_stats after = pool.stats();
    const auto& seen = pool.observer();
    std::printf("%d of %d requests succeeded\n", succeeded.load(), requests);
    std::printf("during the spike: at most %zu connections (%zu of them overflow), %zu callers waiting\n", busiest.size,
                busiest.overflow, busiest.waiting);
    std::printf("a caller that would wait only 10 ms: %s\n", short_wait.c_str());
    std::printf("after it: %zu connections, %zu idle; %llu opened, %llu overflow connections closed on return\n",
                after.size, after.idle, static_cast<unsigned long long>(seen.count(pqpool::event::connected)),
                static_cast<unsigned long long>(seen.count(pqpool::event::trimmed)));
    const bool ok = succeeded == requests && busiest.size <= 8 && busiest.waiting > 0 && after.size == 4 &&
                    short_wait.find("timed out") != std::string::npos;
    return ok ? 0 : 1;
}
