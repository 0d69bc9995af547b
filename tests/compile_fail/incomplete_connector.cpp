// A connector that claims its category but lacks its members is a compile error naming the
// concept (the connector's row of the selection table, whose default is the pool's own).
// expect: pqpool::pool: the connector does not model pqpool::connector
#include <pqpool/pool.hpp>

struct half_a_connector {
    using category = pqpool::connector_tag; // but no handle, connect() or close()
};

pqpool::pool<half_a_connector, pqpool::overflow::fixed>* p = nullptr;
