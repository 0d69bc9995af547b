// What the connector's watch (detail/connection_watch.hpp) costs per result,
// with no timing of its own: N times PQexec("SELECT 1") on one connection,
// unwatched, watched, or watched for a pool with target_session_attrs. Run
// under callgrind for two values of N against a server and divide the
// difference in instructions by the difference in N (only the client's
// instructions are counted; the round trip is not).
//
//   pqpool_bench_watch_cost CONNINFO none|watched|watched+role N

#include <pqpool/connector/libpq.hpp>

#include <atomic>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string_view>

int main(int argc, char** argv) {
    int n = 0;
    if (argc != 4 || std::from_chars(argv[3], argv[3] + std::strlen(argv[3]), n).ec != std::errc{}) {
        std::fprintf(stderr, "usage: %s CONNINFO none|watched|watched+role N\n", argv[0]);
        return 2;
    }
    const std::string_view mode = argv[2];
    std::atomic<std::uint64_t> epoch{0};
    auto binding = std::make_shared<pqpool::detail::epoch_binding>();
    binding->role = mode == "watched+role" ? pqpool::detail::wanted_role::read_write : pqpool::detail::wanted_role::any;
    binding->epoch.store(&epoch);
    PGconn* c = PQconnectdb(argv[1]);
    if (PQstatus(c) != CONNECTION_OK) {
        std::fprintf(stderr, "%s", PQerrorMessage(c));
        return 1;
    }
    if (mode != "none") pqpool::detail::watch_connection(c, binding);
    for (int i = 0; i < n; ++i) PQclear(PQexec(c, "SELECT 1"));
    PQfinish(c);
    return epoch.load() == 0 ? 0 : 1;
}
