// What an operator wants to see when a pool misbehaves: how long acquires wait
// (p50, p99), how long connections are held, how long connects take, why
// connections were closed, which code holds a connection too long (a leak,
// reported with the file and line of its acquire), and when the server's TLS
// certificate expires. This program runs a small load, forgets one lease for a
// while, prints a one-line summary and the logfmt log of the pool's events on
// stderr, and the Prometheus exposition (OpenTelemetry's db.client.connection.*
// names) on stdout: pipe it to `promtool check metrics`, or serve it on
// /metrics.
// Usage: metrics "<conninfo>"
#include <pqpool/observability/logfmt.hpp>
#include <pqpool/observability/prometheus.hpp>
#include <pqpool/observability/tls.hpp>
#include <pqpool/pqpool.hpp>

#include <cstdio>
#include <iostream>
#include <stdexcept>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
namespace obs = pqpool::observability;

// Everything at once: counts, latency histograms, leak detection, TLS facts and
// a log line per rare event (connects, failures, closes, timeouts, leaks).
using metrics =
    obs::combine<obs::counters, obs::histograms, obs::leak_detection, obs::tls, obs::sink<obs::logfmt_writer>>;
using app_pool = pqpool::pool<pqpool::overflow::bounded, metrics>;

int main(int argc, char** argv) {
    app_pool pool{argc > 1 ? argv[1] : "host=localhost sslmode=require",
                  pqpool::overflow::bounded{.size = 2, .max_overflow = 2, .wait = 5s},
                  metrics{obs::counters{}, obs::histograms{}, obs::leak_detection{.threshold = 200ms}, obs::tls{},
                          obs::sink<obs::logfmt_writer>{obs::logfmt_writer{std::cerr, "app"}}}};

    // A small load: 4 threads, 25 short queries each, on a pool of 2 (+2 overflow).
    std::vector<std::thread> workers;
    for (int t = 0; t < 4; ++t)
        workers.emplace_back([&pool] {
            for (int i = 0; i < 25; ++i)
                pool.run([](PGconn* c) {
                    PGresult* r = PQexec(c, "SELECT pg_sleep(0.002)");
                    const bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
                    PQclear(r);
                    if (!ok) throw std::runtime_error(PQerrorMessage(c));
                });
        });
    for (auto& w : workers) w.join();

    // A lease that someone forgot to give back: held past the leak threshold,
    // it is reported (event=leak_suspected, with this file and line) by the
    // pool's next call or by maintain(), which a program calls from its timer.
    auto forgotten = pool.acquire();
    std::this_thread::sleep_for(300ms);
    pool.maintain();
    forgotten.release(); // event=leak_returned: it came back after all

    const auto& h = pool.observer().get<obs::histograms>();
    const auto& c = pool.observer().get<obs::counters>();
    std::fprintf(stderr,
                 "summary: %llu acquires, wait p50 %.3f ms p99 %.3f ms; hold p99 %.3f ms; connect p50 %.1f ms; "
                 "%llu leak(s) suspected\n",
                 static_cast<unsigned long long>(c.count(pqpool::event::acquired)),
                 h.wait().percentile(0.5).count() / 1e6, h.wait().percentile(0.99).count() / 1e6,
                 h.hold().percentile(0.99).count() / 1e6, h.connect().percentile(0.5).count() / 1e6,
                 static_cast<unsigned long long>(c.count(pqpool::event::leak_suspected)));
    if (const auto tls = pool.observer().get<obs::tls>().earliest_expiry())
        std::fprintf(stderr, "TLS: %s, %s; the server certificate (%s) expires in %.1f days\n", tls->protocol.c_str(),
                     tls->cipher.c_str(), tls->certificate_subject.c_str(),
                     static_cast<double>(tls->certificate_expires_in()->count()) / 86400);

    pqpool::write_prometheus(std::cout, pool, "app");
}
