// make_pool with a connector object that does not model the concept: the selection's one
// error, and make_pool constructs nothing after it (no "no matching constructor").
// expect: pqpool::pool: the connector does not model pqpool::connector
#include <pqpool/pool.hpp>

struct half_a_connector {
    using category = pqpool::connector_tag; // but no handle, connect() or close()
};

void f() {
    auto p = pqpool::make_pool(half_a_connector{}, pqpool::overflow::fixed{});
    (void)p;
}
