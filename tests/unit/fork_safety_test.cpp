// Fork safety against the fake connector: what a child does with what it
// inherited. (The real-server proof, TLS included, is in the integration tests.)

#include "catch.hpp"
#include "child.hpp"
#include "test_pool.hpp"

#include <sys/wait.h>
#include <atomic>
#include <thread>
#include <unistd.h>

using namespace pqpool;
using namespace pqpool::test;

TEMPLATE_TEST_CASE("a child abandons inherited connections and starts afresh", "[fork_safety]", fork_safety::detect,
                   fork_safety::check_pid) {
    auto s = std::make_shared<fake_server>();
    using p = fake_pool<validation::none, recycling::none, overflow::fixed, TestType, observability::counters>;
    p pool{fake_connector<>{s}, overflow::fixed{.size = 4}};
    { auto a = pool.acquire(), b = pool.acquire(); }
    auto held = pool.acquire(); // taken before the fork, still out in the child
    REQUIRE(pool.stats().idle == 1);

    const int code = in_child([&] {
        auto fresh = pool.acquire();
        if (fresh.get()->id != 2) return 10;        // a new connection, not an inherited one
        if (!s->connection(1).abandoned) return 11; // the idle inherited one: abandoned, no I/O
        if (s->connection(1).closed) return 12;     // ... and never closed politely
        if (pool.observer().count(event::fork_detected) != 1) return 13;
        if (pool.stats().in_use != 1 || pool.stats().idle != 0) return 14; // counts start afresh
        try {
            (void)held.get();
            return 15; // using a pre-fork lease in the child must throw
        } catch (const closed_error&) {}
        held.release(); // no I/O: abandoned
        if (!s->connection(0).abandoned || s->connection(0).closed) return 16;
        if (s->misuse != 0) return 17;
        return 0;
    });
    CHECK(code == 0);
    // The parent is untouched.
    CHECK(held.get() == &s->connection(0));
    CHECK(s->abandons == 0);
    CHECK(s->closes == 0);
    CHECK(pool.stats().idle == 1);
    CHECK(pool.observer().count(event::fork_detected) == 0);
}

TEST_CASE("fork_safety::none does nothing in the child (the user promised not to fork)", "[fork_safety]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed, observability::counters> pool{fake_connector<>{s}, overflow::fixed{.size = 2}};
    { auto a = pool.acquire(); }
    const int code = in_child([&] {
        auto l = pool.acquire();
        return l.get()->id == 0 && pool.observer().count(event::fork_detected) == 0 ? 0 : 1; // inherited one reused
    });
    CHECK(code == 0);
}

namespace {
// A concurrency policy whose lock stops, held, in one chosen thread: the
// `skip`-th lock that thread takes (counting from 0) stays held until `go`.
// The pool's lock and the leak list's are both of this type, so a test can
// fork() while another thread truly holds either one.
struct lock_stop {
    static inline std::atomic<std::thread::id> thread{};
    static inline std::atomic<int> skip{0};
    static inline std::atomic<bool> inside{false}, go{false};
    static void reset(int locks_to_skip) {
        thread = std::thread::id{};
        skip = locks_to_skip;
        inside = false;
        go = false;
    }
};
struct stopping_lock {
    detail::pool_lock inner;
    void lock() noexcept {
        inner.lock();
        if (lock_stop::thread.load() == std::this_thread::get_id() && lock_stop::skip-- == 0) {
            lock_stop::thread = std::thread::id{};
            lock_stop::inside = true;
            while (!lock_stop::go) std::this_thread::sleep_for(std::chrono::milliseconds{1});
        }
    }
    void unlock() noexcept { inner.unlock(); }
};
struct stopping_concurrency {
    using category = concurrency_tag;
    using mutex_type = stopping_lock;
    static constexpr bool can_wait = true;
    static constexpr bool fifo = true;
    std::chrono::nanoseconds max_spin() const noexcept { return {}; }
};
static_assert(concurrency_policy<stopping_concurrency>);

// Runs `in_thread` on a thread of its own (armed to stop in its lock number
// `locks_to_skip`); once that thread holds the lock, forks and runs `child`
// in the child under alarm(10) (a deadlock kills it: it then has no exit
// code, and in_child fails the test); then lets the thread go.
template <class InThread, class Child>
int fork_while_held(int locks_to_skip, InThread in_thread, Child child) {
    lock_stop::reset(locks_to_skip);
    std::thread holder([&] {
        lock_stop::thread = std::this_thread::get_id();
        in_thread();
    });
    while (!lock_stop::inside) std::this_thread::sleep_for(std::chrono::milliseconds{1});
    int code = -1;
    try {
        code = in_child([&] {
            ::alarm(10);
            return child();
        });
    } catch (...) { // a failed REQUIRE (the child was killed): let the thread go first
        lock_stop::go = true;
        holder.join();
        throw;
    }
    lock_stop::go = true;
    holder.join();
    return code;
}
} // namespace

TEST_CASE("fork() while another thread holds the pool's lock: the child's pool still works", "[fork_safety]") {
    auto s = std::make_shared<fake_server>();
    using p = fake_pool<validation::none, recycling::none, overflow::fixed, fork_safety::detect, stopping_concurrency>;
    p pool{fake_connector<>{s}, overflow::fixed{.size = 1}};
    { auto warm = pool.acquire(); }
    const int code = fork_while_held(
        0, [&] { (void)pool.stats(); }, // its one lock: the pool's
        [&] {
            auto l = pool.acquire();
            return l.get()->id == 1 && pool.stats().in_use == 1 ? 0 : 1;
        });
    CHECK(code == 0);
    CHECK(pool.stats().idle == 1); // the parent's pool is untouched
}

TEST_CASE("fork() while another thread holds the leak list's lock: the child's pool still works",
          "[fork_safety][leak]") {
    auto s = std::make_shared<fake_server>();
    using p = fake_pool<validation::none, recycling::none, overflow::fixed, fork_safety::detect, stopping_concurrency,
                        observability::leak_detection>;
    p pool{fake_connector<>{s}, overflow::fixed{.size = 2}, observability::leak_detection{.threshold = 1ms}};
    auto out = pool.acquire();
    std::this_thread::sleep_for(5ms); // overdue, and the child's acquire is due to look for leaks
    const int code = fork_while_held(
        1, [&] { (void)pool.maintain(); }, // its locks: the pool's (its pin), then the leak list's
        [&] {
            auto l = pool.acquire_for(500ms);
            return l.get()->id == 1 ? 0 : 1;
        });
    CHECK(code == 0);
}
