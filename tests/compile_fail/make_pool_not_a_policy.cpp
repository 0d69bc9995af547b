// make_pool takes policy objects after the connector: anything else is the same one-line
// error as naming it in pool<...>.
// expect: pqpool::pool: an option is neither a pqpool policy nor a connector
#include <chrono>
#include <pqpool/pool.hpp>

void f() { auto p = pqpool::make_pool("host=db", std::chrono::seconds{30}); }
