// A type that is no policy is a compile error that says so.
// expect: pqpool::pool: an option is neither a pqpool policy nor a connector
#include <pqpool/pool.hpp>

#include <string>

pqpool::pool<pqpool::validation::probe, std::string>* p = nullptr;
