// Passing the constructor a policy object the pool was not composed with is an error.
// expect: pqpool::pool: a constructor argument is not one of this pool's policies
#include <pqpool/pool.hpp>

void f() { pqpool::pool<pqpool::validation::probe> p{"host=db", pqpool::validation::ping{}}; }
