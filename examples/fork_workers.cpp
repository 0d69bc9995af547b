// A process holding TLS connections forks workers, and the parent starts failing
// with "SSL error: decryption failed or bad record mac".
// With fork_safety::detect (the default) each child abandons what it inherited
// without a byte of I/O and opens its own connection; the parent is untouched.
// Usage: fork_workers "<conninfo>"
#include <pqpool/pqpool.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

static int query_one(PGconn* c) {
    PGresult* r = PQexec(c, "SELECT 1");
    const bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    return ok ? 0 : 1;
}

int main(int argc, char** argv) {
    pqpool::pool<> pool{argc > 1 ? argv[1] : "host=localhost sslmode=require"};
    if (query_one(pool.acquire().get()) != 0) return 1; // the parent now holds an idle TLS connection

    for (int worker = 0; worker < 4; ++worker) {
        if (::fork() == 0) {
            auto conn = pool.acquire(); // a fresh connection: the inherited one was abandoned
            std::exit(query_one(conn.get()));
        }
    }
    int failures = 0;
    for (int status = 0; ::wait(&status) > 0;) failures += !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    failures += query_one(pool.acquire().get()); // the parent's connection still works
    std::printf("%d failures\n", failures);
    return failures == 0 ? 0 : 1;
}
