// A program that knows pqpool only as a user's project does: through its installed CMake
// package, add_subdirectory, FetchContent or pkg-config (tests/install/run.cmake builds it
// each way). PQPOOL_EXPECT_VERSION is the version the build system reported.
#include <pqpool/observability/prometheus.hpp>
#include <pqpool/observability/tls.hpp>
#include <pqpool/pqpool.hpp>

#include <cstdio>
#include <string>

#ifndef PQPOOL_EXPECT_VERSION
#error "build with -DPQPOOL_EXPECT_VERSION=\"<the version the build system reported>\""
#endif

using consumer_pool = pqpool::pool<pqpool::validation::probe, pqpool::overflow::fixed>;
static_assert(std::is_same_v<consumer_pool, pqpool::pool<pqpool::overflow::fixed, pqpool::validation::probe>>);

int main() {
    const std::string version = std::to_string(PQPOOL_VERSION_MAJOR) + "." + std::to_string(PQPOOL_VERSION_MINOR) +
                                "." + std::to_string(PQPOOL_VERSION_PATCH);
    if (version != PQPOOL_EXPECT_VERSION) {
        std::printf("consumer: the headers say %s, the build system %s\n", version.c_str(), PQPOOL_EXPECT_VERSION);
        return 1;
    }
    // Connections open on demand, so constructing the pool needs no server; port 1 refuses.
    consumer_pool pool{"host=127.0.0.1 port=1 dbname=none connect_timeout=2", pqpool::overflow::fixed{.size = 3}};
    if (pool.stats().size != 0) return 1;
    // The same pool with its type deduced from the policy objects.
    auto deduced =
        pqpool::make_pool("host=127.0.0.1 port=1", pqpool::overflow::fixed{.size = 2}, pqpool::validation::probe{});
    static_assert(std::is_same_v<decltype(deduced), consumer_pool>);
    if (deduced.overflow().size != 2) return 1;
    try {
        (void)pool.acquire_for(std::chrono::seconds{5});
        return 1;
    } catch (const pqpool::connect_error& e) { // libpq linked and called: "Connection refused"
        if (std::string(e.what()).find("127.0.0.1") == std::string::npos) return 1;
    }
    try {
        consumer_pool bad{"host=db password=hunter2 nonsense"};
        return 1;
    } catch (const pqpool::config_error& e) {
        if (std::string(e.what()).find("hunter2") != std::string::npos) return 1;
    }
    // OpenSSL comes along (TLS facts call it); the exposition needs nothing more.
    if (pqpool::read_tls_facts(nullptr)) return 1;
    pqpool::pool<pqpool::observability::tls> watched{"host=127.0.0.1 port=1"};
    if (pqpool::prometheus_exposition().add(watched, "consumer").str().find("db_client_connection_max") ==
        std::string::npos)
        return 1;
    std::printf("consumer: ok (pqpool %s)\n", version.c_str());
}
