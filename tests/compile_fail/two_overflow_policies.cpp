// Naming two policies of one category is a compile error that names the category.
// expect: pqpool::pool: more than one overflow policy named
#include <pqpool/pool.hpp>

pqpool::pool<pqpool::overflow::fixed, pqpool::overflow::bounded>* p = nullptr;
