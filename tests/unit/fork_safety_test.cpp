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
    {
        auto a = pool.acquire(), b = pool.acquire();
    }
    auto held = pool.acquire(); // taken before the fork, still out in the child
    REQUIRE(pool.stats().idle == 1);

    const int code = in_child([&] {
        auto fresh = pool.acquire();
        if (fresh.get()->id != 2) return 10;                    // a new connection, not an inherited one
        if (!s->connection(1).abandoned) return 11;             // the idle inherited one: abandoned, no I/O
        if (s->connection(1).closed) return 12;                 // ... and never closed politely
        if (pool.observer().count(event::fork_detected) != 1) return 13;
        if (pool.stats().in_use != 1 || pool.stats().idle != 0) return 14; // counts start afresh
        try {
            (void)held.get();
            return 15; // using a pre-fork lease in the child must throw
        } catch (const closed_error&) {
        }
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
// An observer that, once armed, blocks inside the pool's lock (the timeout
// event is reported under it) until released: it lets a test fork() while
// another thread holds the pool's mutex.
struct lock_holder {
    using category = observability_tag;
    static inline std::atomic<bool> armed{false}, inside{false}, release{false};
    template <class Handle>
    void on_event(const event_info<Handle>& e) noexcept {
        if (e.kind != event::timeout || !armed.exchange(false)) return;
        inside = true;
        while (!release) std::this_thread::yield();
    }
};
} // namespace

TEST_CASE("fork() while another thread holds the pool's lock: the child's pool still works", "[fork_safety]") {
    auto s = std::make_shared<fake_server>();
    using p = fake_pool<validation::none, recycling::none, overflow::fixed, fork_safety::detect, lock_holder>;
    p pool{fake_connector<>{s}, overflow::fixed{.size = 1}};
    auto held = pool.acquire();
    lock_holder::armed = true;
    std::thread holder([&] {
        try {
            (void)pool.acquire_for(1ms); // times out, and the observer blocks under the lock
        } catch (const timeout_error&) {
        }
    });
    while (!lock_holder::inside) std::this_thread::yield();
    const int code = in_child([&] {
        ::alarm(10); // a deadlock here kills the child instead of hanging the suite
        auto l = pool.acquire();
        return l.get()->id == 1 && pool.stats().in_use == 1 ? 0 : 1;
    });
    lock_holder::release = true;
    holder.join();
    CHECK(code == 0);
}
