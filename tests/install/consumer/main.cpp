// A program that knows pqpool only through its installed CMake package.
#include <pqpool/pqpool.hpp>

#include <cstdio>
#include <string>

using consumer_pool = pqpool::pool<pqpool::validation::probe, pqpool::overflow::fixed>;
static_assert(std::is_same_v<consumer_pool, pqpool::pool<pqpool::overflow::fixed, pqpool::validation::probe>>);

int main() {
    // Connections open on demand, so constructing the pool needs no server.
    consumer_pool pool{"host=127.0.0.1 port=1 dbname=none connect_timeout=1", pqpool::overflow::fixed{.size = 3}};
    const pqpool::pool_stats s = pool.stats();
    if (s.size != 0) return 1;
    try {
        consumer_pool bad{"host=db password=hunter2 nonsense"};
        return 1;
    } catch (const pqpool::config_error& e) {
        if (std::string(e.what()).find("hunter2") != std::string::npos) return 1;
    }
    std::puts("consumer: ok");
}
