// make_pool deduces the pool from its policy objects: two of one category is the same
// one-line error as naming them in pool<...>.
// expect: pqpool::pool: more than one overflow policy named
#include <pqpool/pool.hpp>

void f() { auto p = pqpool::make_pool("host=db", pqpool::overflow::fixed{}, pqpool::overflow::bounded{}); }
