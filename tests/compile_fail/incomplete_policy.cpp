// A type that claims a category but lacks its members is a compile error naming the concept.
// expect: pqpool::pool: the validation policy does not model pqpool::validation_policy
#include <pqpool/pool.hpp>

struct half_a_policy {
    using category = pqpool::validation_tag; // but no validate()
};

pqpool::pool<half_a_policy>* p = nullptr;
