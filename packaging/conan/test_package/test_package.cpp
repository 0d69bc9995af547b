// Composes a pool and acquires against nothing: a construction and a failing connect show
// that the headers, Boost.Hana and libpq were all found and linked.
#include <pqpool/pqpool.hpp>

#include <chrono>
#include <cstdio>

int main() {
    using namespace std::chrono_literals;
    pqpool::pool<pqpool::validation::probe, pqpool::overflow::fixed, pqpool::retry::none> pool{
        "host=127.0.0.1 port=1 connect_timeout=2", pqpool::overflow::fixed{.size = 1, .wait = 5s}};
    try {
        (void)pool.acquire();
        std::puts("test_package: a connection to port 1 was not refused");
        return 1;
    } catch (const pqpool::connect_error& e) {
        std::printf("test_package: ok (pqpool %d.%d.%d; connecting failed as expected: %s)\n", PQPOOL_VERSION_MAJOR,
                    PQPOOL_VERSION_MINOR, PQPOOL_VERSION_PATCH, e.what());
    }
}
