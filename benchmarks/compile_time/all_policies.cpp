// Compile-time probe: a pool composed from every category (the seven policies
// named, in an order other than the canonical one) and used. scripts/bench
// times compiling this against libpq_only.cpp with the same flags, so growth
// of the metaprogramming shows up in its output.

#include <pqpool/pqpool.hpp>

using namespace std::chrono_literals;

using all_pool = pqpool::pool<pqpool::observability::counters, pqpool::concurrency::mutex, pqpool::fork_safety::detect,
                              pqpool::retry::exponential_backoff, pqpool::overflow::bounded, pqpool::recycling::limits,
                              pqpool::validation::ping_if_idle>;

int main(int argc, char** argv) {
    all_pool pool{argc > 1 ? argv[1] : "host=localhost", pqpool::overflow::bounded{.size = 2, .wait = 1s},
                  pqpool::validation::ping_if_idle{.idle_for = 1s}};
    auto conn = pool.acquire();
    PGresult* r = PQexec(conn.get(), "SELECT 1");
    const int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    return ok ? 0 : 1;
}
