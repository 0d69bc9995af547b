// Out of memory inside the pool: nothing is lost, no count goes wrong, and
// the error reaches the caller at once. Allocation fails on demand: this file
// replaces the global operator new for the unit-test program; by default it
// never fails, so the other tests are unaffected.

#include "catch.hpp"
#include "test_pool.hpp"

#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <new>

using namespace pqpool;
using namespace pqpool::test;

namespace {
thread_local int fail_alloc_in = 0; // the n-th allocation on this thread from now throws (0: never)

void* allocate(std::size_t n, std::size_t align = 0) {
    if (fail_alloc_in > 0 && --fail_alloc_in == 0) throw std::bad_alloc();
    if (n == 0) n = 1;
    void* p =
        align > alignof(std::max_align_t) ? std::aligned_alloc(align, (n + align - 1) / align * align) : std::malloc(n);
    if (!p) throw std::bad_alloc();
    return p;
}
void* allocate_nothrow(std::size_t n, std::size_t align = 0) noexcept {
    try {
        return allocate(n, align);
    } catch (...) {
        return nullptr;
    }
}
} // namespace

// Every replaceable form, all on malloc and free: mixing these with the
// runtime's own forms would pair one allocator's new with another's delete
// (AddressSanitizer reports exactly that).
void* operator new(std::size_t n) { return allocate(n); }
void* operator new[](std::size_t n) { return allocate(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return allocate_nothrow(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return allocate_nothrow(n); }
void* operator new(std::size_t n, std::align_val_t a) { return allocate(n, static_cast<std::size_t>(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return allocate(n, static_cast<std::size_t>(a)); }
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    return allocate_nothrow(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    return allocate_nothrow(n, static_cast<std::size_t>(a));
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }

TEST_CASE("maintain() that runs out of memory loses no connection", "[oom][recycling]") {
    manual_clock::reset();
    auto s = std::make_shared<fake_server>();
    using mp = manual_pool<validation::none, recycling::limits, retry::none, fork_safety::none, overflow::fixed>;
    mp pool{fake_connector<manual_clock>{s}, overflow::fixed{.size = 4, .wait = 1s},
            recycling::limits{.max_lifetime = 0ms, .max_idle = 1s}};
    { auto a = pool.acquire(), b = pool.acquire(), c = pool.acquire(); }
    REQUIRE(pool.stats().idle == 3);
    manual_clock::advance(1h); // all three idle too long
    for (int n = 1; n <= 3; ++n) {
        fail_alloc_in = n; // the n-th allocation of this maintain() fails
        try {
            (void)pool.maintain();
        } catch (const std::bad_alloc&) {}
        fail_alloc_in = 0;
        const pool_stats st = pool.stats();
        CHECK(st.in_use == 0); // no lease is out
        CHECK(static_cast<int>(st.size) == s->open());
    }
}

TEST_CASE("out of memory when starting a connect reaches the caller at once", "[oom]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed> pool{fake_connector<>{s}, overflow::fixed{.size = 2, .wait = 2s}};
    auto a = pool.acquire();
    const auto t0 = std::chrono::steady_clock::now();
    fail_alloc_in = 1; // `new chain`
    CHECK_THROWS_AS(pool.acquire(), std::bad_alloc);
    fail_alloc_in = 0;
    CHECK(std::chrono::steady_clock::now() - t0 < 1s); // not the 2 s wait
    CHECK(pool.stats() == pool_stats{.size = 1, .in_use = 1});
    auto b = pool.acquire(); // the slot is free again
    CHECK(pool.stats().in_use == 2);
}
