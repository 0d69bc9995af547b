// Through a pool: leases that come back with a query still running are closed
// by the pool, and the server's count of backends matches the pool's size.

#include "catch.hpp"
#include "pg.hpp"
#include "sandbox.hpp"

#include <pqpool/pqpool.hpp>

#include <chrono>
#include <string>

using namespace pqpool;
using namespace std::chrono_literals;
using test::admin;
using test::named;
using test::sandbox;
using test::unique_name;

TEST_CASE("a lease returned with a query running leaves no backend running in the server", "[integration][pool]") {
    const std::string app = unique_name("pqpool_busy_return");
    admin server;
    {
        // A generous cancel_timeout: on a loaded machine the cancel's own connect can take more
        // than the default second, and the connection is then closed with its query running on
        // (the bound itself is tested in connector_cancel_test.cpp).
        pool<overflow::fixed> p{
            libpq_connector{sandbox::get().tls(),
                            {.cancel_timeout = 10s, .setup = {"SET application_name = '" + app + "'"}}},
            overflow::fixed{.size = 2, .wait = 10s}};
        for (int i = 0; i < 6; ++i) {
            auto lease = p.acquire();
            REQUIRE(PQsendQuery(lease.get(), "SELECT pg_sleep(60)") == 1);
        } // returned busy: the pool cannot reuse it and closes it
        const auto st = p.stats();
        CAPTURE(st.size, st.idle, st.in_use);
        CHECK(server.settled_count(app, static_cast<int>(st.size)) == static_cast<int>(st.size));
    }
    CHECK(server.settled_count(app, 0) == 0);
}
