// A lease is move-only: copying one does not compile.
// expect: (use of deleted function|call to deleted constructor)
#include <pqpool/pool.hpp>

void f(pqpool::pool<>& p) {
    auto a = p.acquire();
    auto b = a;
    (void)b;
}
