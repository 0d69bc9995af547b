// Compile-time probe, the reference: libpq alone, no pool (see all_policies.cpp).

#include <libpq-fe.h>

int main(int argc, char** argv) {
    PGconn* conn = PQconnectdb(argc > 1 ? argv[1] : "host=localhost");
    PGresult* r = PQexec(conn, "SELECT 1");
    const int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    PQfinish(conn);
    return ok ? 0 : 1;
}
