// A randomized search of the pool's state space against the fake connector.
//
// Several threads run random sequences of every public operation (acquire,
// acquire_for with zero, short, long and unlimited waits, try_acquire, lease
// release / mark_broken / move / destruction, run() with work that succeeds,
// throws or loses its connection, maintain, stats) while the fake connector
// injects faults at random: connects that fail (transiently, permanently) or
// take longer than the wait, pings that are slow, connections that die in a
// holder's hands, resets that fail, busy connections whose close is slow. Each
// run ends in one of three ways: all threads finish and the pool is checked at
// rest, close() while threads are still inside, or the pool is destroyed while
// threads are inside acquire() and run().
//
// Checked against an independent model (the fake connector's own counts and a
// per-connection lease counter), at every step and at the end:
// - a connection is never held by two leases at once;
// - never more connections open (or opening) than the overflow policy allows;
// - every handle is closed exactly once (misuse == 0), none is left open
//   after the pool is gone, no connect is left in flight;
// - no acquire returns later than its wait plus the margin;
// - only the documented exceptions come out;
// - at rest, the pool's counts equal the fake's (idle == open, opening ==
//   connects in flight, nothing in use or waiting);
// - every waiter wakes when the pool closes or is destroyed;
// - an unlimited wait never times out;
// - waiters are served first come, first served, also when the connection
//   handed to the first one fails validation or is retired (check_fifo; under
//   concurrency::barging, only that every one of them is served).
//
// A failure prints its seed. Environment:
//   PQPOOL_MODEL_SEED=<n>     first seed (default: random, printed)
//   PQPOOL_MODEL_RUNS=<n>     how many runs (default 2000)
//   PQPOOL_MODEL_SECONDS=<n>  stop after this long instead (scripts/model-soak)

#include "catch.hpp"
#include "test_pool.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace pqpool;
using namespace pqpool::test;

namespace {

using steady = std::chrono::steady_clock;

// The README documents a few milliseconds; sanitizers and a shared 2-core
// machine need more. A broken bound overshoots by a stalled connect or ping
// (slow_delay, 400 ms), or hangs.
constexpr auto margin = 300ms;

std::uint64_t env_number(const char* name, std::uint64_t fallback) {
    const char* v = std::getenv(name);
    return v && *v ? std::strtoull(v, nullptr, 10) : fallback;
}

struct violations {
    std::mutex m;
    std::vector<std::string> list;
    void add(std::string what) {
        std::lock_guard lock(m);
        if (list.size() < 20) list.push_back(std::move(what));
    }
};

// The pool types searched: combinations that change the core's paths
// (validation that round-trips, lifetimes and uses, overflow kinds, retry
// with a connect limit), under each concurrency policy: first come, first
// served (a to d), barging (e, f: waiters overtaken, nudged, handed over once
// their patience ran out), and single_thread (g, one thread, never waits).
using model_a = fake_pool<validation::probe, recycling::limits, overflow::bounded, retry::exponential_backoff,
                          fork_safety::none, observability::counters>;
using model_b = fake_pool<validation::ping, recycling::none, overflow::fixed, retry::none, fork_safety::none>;
using model_c = fake_pool<validation::ping_if_idle, recycling::limits, overflow::pass_through,
                          retry::exponential_backoff, fork_safety::detect>;
using model_d = fake_pool<validation::ping_if_idle, recycling::limits, overflow::fixed, retry::exponential_backoff,
                          fork_safety::none>;
using model_e = fake_pool<validation::probe, recycling::limits, overflow::bounded, retry::exponential_backoff,
                          fork_safety::none, observability::counters, concurrency::barging>;
using model_f = fake_pool<validation::ping_if_idle, recycling::limits, overflow::pass_through,
                          retry::exponential_backoff, fork_safety::detect, concurrency::barging>;
using model_g = fake_pool<validation::ping, recycling::limits, overflow::bounded, retry::exponential_backoff,
                          fork_safety::none, concurrency::single_thread>;

// Spinning or not, and (barging) patience from none to longer than any wait.
concurrency::mutex make_fifo(std::mt19937_64& rng) {
    return concurrency::mutex{.spin = std::chrono::microseconds{rng() % 2 ? 0 : 1 + rng() % 100}};
}
concurrency::barging make_barging(std::mt19937_64& rng) {
    constexpr std::chrono::microseconds patience[] = {0us, 100us, 1ms, 5ms, 1s};
    return concurrency::barging{.spin = std::chrono::microseconds{rng() % 2 ? 0 : 1 + rng() % 100},
                                .patience = patience[rng() % 5]};
}

template <class Pool>
Pool make_pool(std::shared_ptr<fake_server> s, std::mt19937_64& rng);

// model_a's and model_e's numbers, under either concurrency policy.
template <class Pool, class Concurrency>
Pool bounded_with_limits(std::shared_ptr<fake_server> s, std::mt19937_64& rng, Concurrency concurrency) {
    const std::size_t size = 1 + rng() % 3;
    return Pool{
        fake_connector<>{s},
        overflow::bounded{.size = size, .max_overflow = rng() % 3, .wait = 8ms, .waiters = 1 + rng() % 6},
        recycling::limits{.max_lifetime = std::chrono::milliseconds{5 + rng() % 50},
                          .jitter = std::chrono::milliseconds{rng() % 5},
                          .max_uses = rng() % 4,
                          .max_idle = std::chrono::milliseconds{rng() % 20},
                          .min_idle = rng() % (size + 1)},
        retry::exponential_backoff{
            .attempts = 1 + static_cast<unsigned>(rng() % 4), .base = 1ms, .cap = 3ms, .connecting = 1 + rng() % 2},
        concurrency};
}
// model_c's and model_f's.
template <class Pool, class Concurrency>
Pool pass_through_pool(std::shared_ptr<fake_server> s, std::mt19937_64& rng, Concurrency concurrency) {
    return Pool{fake_connector<>{s},
                overflow::pass_through{.max_open = 1 + rng() % 3, .wait = 8ms},
                validation::ping_if_idle{.idle_for = 1ms, .timeout = 1s},
                recycling::limits{.max_lifetime = 0ms, .max_idle = 0ms},
                retry::exponential_backoff{.attempts = 3, .base = 1ms, .cap = 2ms, .connecting = 1},
                concurrency};
}

template <>
model_a make_pool<model_a>(std::shared_ptr<fake_server> s, std::mt19937_64& rng) {
    return bounded_with_limits<model_a>(std::move(s), rng, make_fifo(rng));
}
template <>
model_b make_pool<model_b>(std::shared_ptr<fake_server> s, std::mt19937_64& rng) {
    return model_b{fake_connector<>{s}, overflow::fixed{.size = 1 + rng() % 3, .wait = 5ms},
                   validation::ping{.timeout = std::chrono::milliseconds{1 + rng() % 5}}, make_fifo(rng)};
}
template <>
model_c make_pool<model_c>(std::shared_ptr<fake_server> s, std::mt19937_64& rng) {
    return pass_through_pool<model_c>(std::move(s), rng, make_fifo(rng));
}
template <>
model_d make_pool<model_d>(std::shared_ptr<fake_server> s, std::mt19937_64& rng) {
    const std::size_t size = 1 + rng() % 4;
    return model_d{
        fake_connector<>{s},
        overflow::fixed{.size = size, .wait = 10ms},
        validation::ping_if_idle{.idle_for = std::chrono::milliseconds{rng() % 3}, .timeout = 1s},
        recycling::limits{.max_lifetime = 0ms, .max_uses = rng() % 3, .min_idle = rng() % (size + 1)},
        retry::exponential_backoff{
            .attempts = 2 + static_cast<unsigned>(rng() % 3), .base = 1ms, .cap = 4ms, .connecting = 1 + rng() % 3},
        make_fifo(rng)};
}
template <>
model_e make_pool<model_e>(std::shared_ptr<fake_server> s, std::mt19937_64& rng) {
    return bounded_with_limits<model_e>(std::move(s), rng, make_barging(rng));
}
template <>
model_f make_pool<model_f>(std::shared_ptr<fake_server> s, std::mt19937_64& rng) {
    return pass_through_pool<model_f>(std::move(s), rng, make_barging(rng));
}
template <>
model_g make_pool<model_g>(std::shared_ptr<fake_server> s, std::mt19937_64& rng) {
    const std::size_t size = 1 + rng() % 3;
    return model_g{fake_connector<>{s}, overflow::bounded{.size = size, .max_overflow = rng() % 3, .wait = 8ms},
                   validation::ping{.timeout = std::chrono::milliseconds{1 + rng() % 5}},
                   recycling::limits{.max_lifetime = std::chrono::milliseconds{5 + rng() % 50},
                                     .jitter = std::chrono::milliseconds{rng() % 5},
                                     .max_uses = rng() % 4,
                                     .min_idle = rng() % (size + 1)},
                   retry::exponential_backoff{
                       .attempts = 1 + static_cast<unsigned>(rng() % 4), .base = 1ms, .cap = 3ms, .connecting = 1}};
}

// One thread's random program.
template <class Pool>
class actor {
public:
    using lease = typename Pool::lease;

    actor(Pool& pool, fake_server& server, violations& v, std::uint64_t seed)
        : pool_(pool),
          server_(server),
          v_(v),
          rng_(seed) {}

    void run_ops(int n) {
        for (int i = 0; i < n; ++i) step();
        while (!held_.empty()) drop(0);
    }

    // Runs until told to stop; used while the pool is closed under it.
    void run_until(const std::atomic<bool>& stop) {
        for (int i = 0; !stop && i < 100000; ++i) step();
        while (!held_.empty()) drop(0);
    }

private:
    void step() {
        const unsigned r = rng_() % 100;
        try {
            if (r < 30) {
                take(pick_wait());
            } else if (r < 38) {
                if (auto l = pool_.try_acquire()) adopt(std::move(*l));
            } else if (r < 60) {
                if (!held_.empty()) drop(rng_() % held_.size());
            } else if (r < 66) {
                if (held_.size() >= 2) { // move one lease over another (which returns)
                    const std::size_t a = rng_() % held_.size(), b = rng_() % held_.size();
                    if (a != b) {
                        release_marker(held_[b]);
                        held_[b] = std::move(held_[a]);
                        held_.erase(held_.begin() + static_cast<std::ptrdiff_t>(a));
                    }
                }
            } else if (r < 80) {
                run_work();
            } else if (r < 85) {
                (void)pool_.maintain();
            } else {
                const pool_stats s = pool_.stats();
                if (s.size != s.idle + s.in_use + s.opening) v_.add("stats inconsistent");
                if (s.size > max_) v_.add("stats: size " + std::to_string(s.size) + " above the maximum");
            }
        } catch (const timeout_error&) {
        } catch (const exhausted_error&) {
        } catch (const connect_error&) {
        } catch (const closed_error&) {
        } catch (const work_failed&) {
        } catch (const std::exception& e) {
            v_.add(std::string("unexpected exception: ") + e.what());
        }
    }

    struct work_failed : std::runtime_error {
        using std::runtime_error::runtime_error;
    };

    std::chrono::milliseconds pick_wait() {
        switch (rng_() % 6) {
        case 0: return 0ms;
        case 1: return 1ms;
        case 2: return 2ms;
        case 3: return 5ms;
        case 4: return held_.empty() ? 15ms : 2ms;
        default: return held_.empty() ? std::chrono::milliseconds::max() : 5ms; // unlimited only while holding nothing
        }
    }

    void take(std::chrono::milliseconds wait) {
        const auto start = steady::now();
        std::optional<lease> l;
        try {
            l.emplace(pool_.acquire_for(wait));
        } catch (const timeout_error& e) {
            if (wait == std::chrono::milliseconds::max())
                v_.add(std::string("an unlimited wait timed out: ") + e.what());
            check_bound(start, wait);
            throw;
        } catch (...) {
            check_bound(start, wait);
            throw;
        }
        check_bound(start, wait);
        adopt(std::move(*l));
    }

    void check_bound(steady::time_point start, std::chrono::milliseconds wait) {
        if (wait == std::chrono::milliseconds::max()) return;
        const auto took = steady::now() - start;
        if (took > wait + margin)
            v_.add("acquire_for(" + std::to_string(wait.count()) + " ms) took " +
                   std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()) + " ms");
    }

    void adopt(lease l) {
        if (!l) return v_.add("an acquire returned an empty lease");
        if (l.get()->leases.fetch_add(1) != 0) v_.add("a connection was handed to two leases at once");
        held_.push_back(std::move(l));
    }

    void release_marker(lease& l) {
        if (l) l.get()->leases.fetch_sub(1);
    }

    // Returns held_[i], after doing to its connection what a user or a server might.
    void drop(std::size_t i) {
        lease l = std::move(held_[i]);
        held_.erase(held_.begin() + static_cast<std::ptrdiff_t>(i));
        fake_connection* c = l.get();
        switch (rng_() % 8) {
        case 0: server_.kill(c); break; // the server dropped it while held
        case 1: l.mark_broken(); break;
        case 2: {
            std::lock_guard lock(server_.m);
            c->busy = true; // returned with a query running: reset refuses, close is slow
            break;
        }
        case 3: {
            std::lock_guard lock(server_.m);
            c->in_transaction = true;
            break;
        }
        default: break;
        }
        release_marker(l);
        if (rng_() % 2) l.release(); // else: the destructor returns it
    }

    void run_work() {
        const unsigned kind = rng_() % 4;
        int calls = 0;
        pool_.run([&](fake_connection* c) {
            if (c->leases.fetch_add(1) != 0) v_.add("run(): a connection was handed to two leases at once");
            struct unmark {
                fake_connection* c;
                ~unmark() { c->leases.fetch_sub(1); }
            } guard{c};
            ++calls;
            switch (kind) {
            case 0: return;                                    // succeeds
            case 1: throw work_failed("the work's own error"); // never retried
            case 2:                                            // loses its connection once
                if (calls == 1) {
                    server_.kill(c);
                    throw work_failed("server closed the connection unexpectedly");
                }
                return;
            default: // loses its connection every time: retried until the budget is spent
                server_.kill(c);
                throw work_failed("lost again");
            }
        });
    }

    Pool& pool_;
    fake_server& server_;
    violations& v_;
    std::mt19937_64 rng_;
    std::vector<lease> held_;
    std::size_t max_ = 0;

public:
    void set_max(std::size_t m) { max_ = m; }
};

// Waiters are served first come, first served. The pool is full (this thread
// holds every connection it may open); callers line up one at a time (each
// counted in stats().waiting before the next comes), then this thread returns
// one lease at a time, each after something a server or a user might do to it
// (killed: the hand-off fails validation, or the release retires it; marked
// broken: closed, its slot becomes a connect permit; expired or used up by the
// recycling policy), and the next one only after a caller was served. A
// caller served hands its lease back to this thread, so the pool stays full.
// The callers must be served in the order they lined up (under a policy that
// lets waiters be overtaken, only served).
template <class Pool>
void check_fifo(Pool& pool, fake_server& server, violations& v, std::mt19937_64& rng) {
    constexpr bool fifo = Pool::concurrency_policy_type::fifo;
    using lease = typename Pool::lease;
    const std::size_t max_size = pool.overflow().max_size();
    std::vector<lease> held;
    for (std::size_t tries = 0; held.size() < max_size && tries < 3 * max_size + 10; ++tries) {
        try {
            held.push_back(pool.acquire_for(1s));
        } catch (const error&) { // a connect whose failure was drawn before the faults stopped
        }
    }
    if (held.size() < max_size) return v.add("FIFO: could not fill the pool: " + detail::describe(pool.stats()));
    const int callers =
        static_cast<int>(std::min<std::size_t>(pool.overflow().max_waiters(), 2 + static_cast<std::size_t>(rng() % 4)));
    std::mutex m;
    std::vector<int> order;
    std::vector<lease> handed_back;
    std::atomic<int> served{0};
    std::vector<std::thread> ts;
    const auto give_up = steady::now() + 10s;
    for (int i = 0; i < callers; ++i) {
        ts.emplace_back([&, i] {
            try {
                lease l = pool.acquire_for(10s);
                std::lock_guard lock(m);
                order.push_back(i);
                handed_back.push_back(std::move(l));
            } catch (const std::exception& e) {
                v.add("FIFO: caller " + std::to_string(i) + " was not served: " + e.what());
            }
            ++served;
        });
        while (pool.stats().waiting < static_cast<std::size_t>(i + 1) && steady::now() < give_up)
            std::this_thread::yield();
    }
    for (int i = 0; i < callers && steady::now() < give_up; ++i) {
        if (held.empty()) {
            std::lock_guard lock(m);
            held.swap(handed_back);
        }
        lease l = std::move(held.back());
        held.pop_back();
        switch (rng() % 4) {
        case 0: server.kill(l.get()); break;
        case 1: l.mark_broken(); break;
        default: break;
        }
        l.release();
        while (served < i + 1 && steady::now() < give_up) std::this_thread::yield();
    }
    for (auto& t : ts) t.join();
    std::vector<int> expected(static_cast<std::size_t>(callers));
    for (int i = 0; i < callers; ++i) expected[static_cast<std::size_t>(i)] = i;
    if (!fifo) std::sort(order.begin(), order.end());
    if (order != expected) {
        std::string got;
        for (int i : order) got += " " + std::to_string(i);
        v.add("FIFO: callers lined up as 0.." + std::to_string(callers - 1) + " were served as" + got);
    }
}

// Time spent per ending, for the summary line.
std::chrono::nanoseconds time_in_ending[3]{};

template <class Pool>
void one_run(std::uint64_t seed, std::vector<std::string>& failures) {
    const auto run_start = steady::now();
    std::mt19937_64 rng(seed);
    auto server = std::make_shared<fake_server>();
    server->rng.seed(seed ^ 0x9E3779B97F4A7C15ull);
    chaos c;
    c.transient = (rng() % 4) * 0.05;
    c.permanent = (rng() % 3) * 0.02;
    c.reset_fails = (rng() % 3) * 0.1;
    c.max_connect_delay = std::chrono::microseconds{rng() % 3000};
    c.max_ping_delay = std::chrono::microseconds{rng() % 3000};
    c.max_busy_close = std::chrono::microseconds{rng() % 2000};
    // Now and then a connect or a ping stalls far longer than any wait: a caller must still
    // return within its wait plus the margin (the margin is shorter than the stall).
    c.slow = 0.005;
    c.slow_delay = 400ms;
    server->random = c;
    violations v;
    auto pool = std::make_unique<Pool>(make_pool<Pool>(server, rng));
    const std::size_t max_size = pool->overflow().max_size();

    // A single_thread pool has one user, and only that one can end it.
    constexpr bool one_thread = !Pool::concurrency_policy_type::can_wait;
    const int threads = one_thread ? 1 : 2 + static_cast<int>(rng() % 4);
    const int ops = (one_thread ? 60 : 15) + static_cast<int>(rng() % 30);
    const unsigned ending = one_thread ? 0 : rng() % 3;
    std::vector<std::unique_ptr<actor<Pool>>> actors;
    for (int t = 0; t < threads; ++t) {
        actors.push_back(std::make_unique<actor<Pool>>(*pool, *server, v, seed * 31 + static_cast<unsigned>(t)));
        actors.back()->set_max(max_size);
    }

    if (ending == 0) {    // every thread finishes; the pool is checked at rest
        if (one_thread) { // its user is this thread, which checks the pool below
            actors[0]->run_ops(ops);
        } else {
            std::vector<std::thread> ts;
            for (auto& a : actors) ts.emplace_back([&a, ops] { a->run_ops(ops); });
            for (auto& t : ts) t.join();
        }
        const auto check_rest = [&](const char* when, bool settled) {
            const pool_stats s = pool->stats();
            int open, in_flight;
            {
                std::lock_guard lock(server->m);
                open = server->open_locked();
                in_flight = server->in_flight;
            }
            if (s.in_use != 0 || s.waiting != 0) v.add(std::string(when) + ": " + detail::describe(s));
            if (static_cast<int>(s.idle) != open)
                v.add(std::string(when) + ": the pool counts " + std::to_string(s.idle) + " idle, the server " +
                      std::to_string(open) + " open");
            // A parked chain in its backoff has no attempt in flight; one with an attempt has exactly one.
            if (in_flight > static_cast<int>(s.opening) || (settled && s.opening != 0))
                v.add(std::string(when) + ": the pool counts " + std::to_string(s.opening) + " opening, the server " +
                      std::to_string(in_flight) + " connects in flight");
        };
        check_rest("at rest", false);
        {
            std::lock_guard lock(server->m);
            server->random.reset();
        }
        // maintain() finishes what callers left unfinished (after any backoff has passed).
        std::this_thread::sleep_for(10ms);
        for (int i = 0; i < 5 && pool->stats().opening != 0; ++i) {
            try {
                (void)pool->maintain();
            } catch (const connect_error&) { // an attempt whose failure was drawn before the faults stopped
            }
            std::this_thread::sleep_for(5ms);
        }
        check_rest("after maintain()", true);
        if (!one_thread) check_fifo(*pool, *server, v, rng);
        pool.reset();
    } else if (ending == 1) { // close() while threads are inside; every waiter must wake
        std::atomic<bool> stop{false};
        std::vector<std::thread> ts;
        for (auto& a : actors) ts.emplace_back([&a, &stop] { a->run_until(stop); });
        std::this_thread::sleep_for(std::chrono::milliseconds{rng() % 15});
        pool->close();
        std::this_thread::sleep_for(2ms);
        stop = true;
        for (auto& t : ts) t.join();
        if (pool->stats().size != 0) v.add("after close(): " + detail::describe(pool->stats()));
        pool.reset();
    } else { // destroyed while threads are inside acquire() (waiting) and inside run()'s work
        std::vector<std::thread> ts;
        for (auto& a : actors) ts.emplace_back([&a, ops] { a->run_ops(ops / 2); });
        for (auto& t : ts) t.join();
        ts.clear();
        {
            std::lock_guard lock(server->m);
            server->random.reset(); // from here on the threads must be known to be inside before it goes
        }
        Pool* p = pool.get();
        // Hold every connection the pool may open, then free k of them for k workers.
        std::vector<typename Pool::lease> all;
        for (std::size_t tries = 0; all.size() < max_size && tries < 3 * max_size + 10; ++tries) {
            try {
                all.push_back(p->acquire_for(1s)); // a stalled connect (parked) may take its 400 ms
            } catch (const error&) {               // a connect that failed before the faults were turned off
            }
        }
        if (all.size() < max_size) v.add("could not fill the pool without faults: " + detail::describe(p->stats()));
        const int workers = std::min<int>(threads / 2, static_cast<int>(all.size()));
        // A bounded line refuses the rest at once (exhausted_error): only as many as it takes may wait.
        const int waiters = static_cast<int>(std::min<std::size_t>(threads - workers, p->overflow().max_waiters()));
        const int total = workers + waiters;
        for (int k = 0; k < workers; ++k) all.pop_back();
        std::atomic<int> in_work{0};
        std::atomic<bool> destroyed{false};
        const auto give_up = steady::now() + 10s;
        for (int t = 0; t < total; ++t) {
            if (t == workers) // the workers hold the free connections before anyone waits for them
                while (in_work < workers && steady::now() < give_up) std::this_thread::yield();
            ts.emplace_back([&, t] {
                try {
                    if (t < workers) {
                        p->run([&](fake_connection* c) {
                            ++in_work;
                            while (!destroyed) std::this_thread::yield();
                            server->kill(c); // lost mid-work: run() tries again, on a destroyed pool
                            throw std::runtime_error("lost");
                        });
                        v.add("run() retried on a destroyed pool and succeeded");
                    } else {
                        (void)p->acquire_for(std::chrono::milliseconds::max()); // woken by the destruction
                        v.add("an unlimited acquire returned a connection although the pool was full and destroyed");
                    }
                } catch (const closed_error&) {
                } catch (const std::runtime_error& e) {
                    // run() rethrows the work's own error when its policy gives no retry
                    if (std::string(e.what()) != "lost") v.add(std::string("unexpected: ") + e.what());
                }
            });
        }
        while ((in_work < workers || p->stats().waiting < static_cast<std::size_t>(waiters)) && steady::now() < give_up)
            std::this_thread::yield();
        if (in_work < workers || p->stats().waiting < static_cast<std::size_t>(waiters)) {
            v.add("the threads never got inside: " + detail::describe(p->stats()));
            p->close(); // do not destroy the pool under a thread that may still be entering it
        }
        pool.reset();
        destroyed = true;
        for (auto& t : ts) t.join();
        all.clear(); // leases outlive the pool: their connections close on return
    }

    // After the pool is gone: nothing open, nothing in flight, each handle closed once.
    {
        std::lock_guard lock(server->m);
        if (server->open_locked() != 0) v.add(std::to_string(server->open_locked()) + " connections left open");
        if (server->in_flight != 0) v.add(std::to_string(server->in_flight) + " connects left in flight");
        if (server->misuse != 0) v.add("a handle was used after close, or closed twice");
        if (static_cast<std::size_t>(server->max_open_or_opening) > max_size)
            v.add("the server saw " + std::to_string(server->max_open_or_opening) + " connections, the limit is " +
                  std::to_string(max_size));
    }
    for (auto& f : v.list) failures.push_back("seed " + std::to_string(seed) + ": " + f);
    time_in_ending[ending] += steady::now() - run_start;
}

} // namespace

TEST_CASE("model: random operations and faults keep every invariant", "[model]") {
    const std::uint64_t first = env_number("PQPOOL_MODEL_SEED", std::random_device{}());
    const std::uint64_t runs = env_number("PQPOOL_MODEL_RUNS", 2000);
    const std::uint64_t seconds = env_number("PQPOOL_MODEL_SECONDS", 0);
    std::cout << "model: first seed " << first << " (replay one run: PQPOOL_MODEL_SEED=<seed> PQPOOL_MODEL_RUNS=1)"
              << std::endl;
    const auto stop_at = steady::now() + std::chrono::seconds{seconds};
    std::vector<std::string> failures;
    std::uint64_t done = 0;
    for (std::uint64_t i = 0; seconds ? steady::now() < stop_at : i < runs; ++i, ++done) {
        const std::uint64_t seed = first + i;
        switch (seed % 7) {
        case 0: one_run<model_a>(seed, failures); break;
        case 1: one_run<model_b>(seed, failures); break;
        case 2: one_run<model_c>(seed, failures); break;
        case 3: one_run<model_d>(seed, failures); break;
        case 4: one_run<model_e>(seed, failures); break;
        case 5: one_run<model_f>(seed, failures); break;
        default: one_run<model_g>(seed, failures); break;
        }
        if (failures.size() > 10) break;
    }
    const auto ms = [](std::chrono::nanoseconds d) {
        return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
    };
    std::cout << "model: " << done << " runs, " << failures.size()
              << " failures (time at rest / closed / destroyed: " << ms(time_in_ending[0]) << " / "
              << ms(time_in_ending[1]) << " / " << ms(time_in_ending[2]) << ")" << std::endl;
    for (const auto& f : failures) UNSCOPED_INFO(f);
    CHECK(failures.empty());
    CHECK(done > 0);
}
