// A program compiled with PQPOOL_SEPARATE_COMPILATION: this unit only declares
// the connector's functions and pool<> (check_symbols.cmake checks its object
// file), src.cpp defines them, and the program works as a header-only one does.

#include <pqpool/pqpool.hpp>

#include <chrono>
#include <cstdio>

using namespace std::chrono_literals;

int main() {
    try { // the connector's constructor, compiled in src.cpp, refuses a bad port
        pqpool::libpq_connector bad{"host=localhost port=99999"};
        std::puts("separate: a bad port was accepted");
        return 1;
    } catch (const pqpool::config_error&) {}
    // pool<> (instantiated in src.cpp) over a closed port: one connect attempt, refused.
    pqpool::pool<> pool{"hostaddr=127.0.0.1 port=1 connect_timeout=2",
                        pqpool::retry::exponential_backoff{.attempts = 1}};
    try {
        auto lease = pool.acquire_for(5s);
        std::puts("separate: a closed port gave a connection");
        return 2;
    } catch (const pqpool::connect_error&) {}
    // A composition of its own is compiled here, as in header-only mode.
    auto other = pqpool::make_pool("hostaddr=127.0.0.1 port=1 connect_timeout=2", pqpool::validation::probe{},
                                   pqpool::retry::none{});
    try {
        if (other.try_acquire().has_value()) return 3;
    } catch (const pqpool::connect_error&) {}
    return pool.stats().size == 0 && other.stats().size == 0 ? 0 : 4;
}
