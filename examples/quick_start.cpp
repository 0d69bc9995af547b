// The README's pool in five lines: a production pool, one query. Usage: quick_start "<conninfo>"
#include <pqpool/pqpool.hpp>

#include <cstdio>

int main(int argc, char** argv) {
    using namespace std::chrono_literals;
    auto pool = pqpool::make_pool(argc > 1 ? argv[1] : "host=localhost dbname=postgres",
                                  pqpool::validation::ping_if_idle{.idle_for = 1s},
                                  pqpool::overflow::bounded{.size = 10, .max_overflow = 20, .wait = 5s});
    auto conn = pool.acquire(); // a lease: returns itself on scope exit
    PGresult* r = PQexec(conn.get(), "SELECT 'hello from ' || version()");
    std::printf("%s\n", PQgetvalue(r, 0, 0));
    PQclear(r);
}
