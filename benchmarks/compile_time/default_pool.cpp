// Compile-time probe: the default pool, pool<>, composed and used (see
// all_policies.cpp for a pool of every category named).

#include <pqpool/pqpool.hpp>

int main(int argc, char** argv) {
    pqpool::pool<> pool{argc > 1 ? argv[1] : "host=localhost"};
    auto conn = pool.acquire();
    PGresult* r = PQexec(conn.get(), "SELECT 1");
    const int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    return ok ? 0 : 1;
}
