// Naming two policies of one category is a compile error that names the category.
// expect: pqpool::pool: more than one validation policy named
#include <pqpool/pool.hpp>

pqpool::pool<pqpool::validation::probe, pqpool::overflow::fixed, pqpool::validation::ping>* p = nullptr;
