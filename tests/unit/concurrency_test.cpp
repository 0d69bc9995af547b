// Concurrency policies.

#include "catch.hpp"
#include "test_pool.hpp"

#include <sched.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>
#include <string>
#include <mutex>
#include <thread>
#include <tuple>
#include <vector>

using namespace pqpool;
using namespace pqpool::test;

TEST_CASE("concurrency::single_thread never waits: a full pool throws exhausted_error", "[concurrency]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed, concurrency::single_thread> pool{fake_connector<>{s},
                                                                overflow::fixed{.size = 1, .wait = 10s}};
    auto l = pool.acquire();
    CHECK_THROWS_WITH(pool.acquire(), Catch::Contains("single_thread"));
    l.release();
    CHECK(pool.acquire().get()->id == 0);
    STATIC_REQUIRE(std::is_empty_v<concurrency::single_thread>);
}

namespace {
using waiting_policies = std::tuple<concurrency::mutex, concurrency::barging>;

// Is thread `tid` of this process asleep (state S in /proc)?
bool asleep(pid_t tid) {
    std::ifstream stat("/proc/self/task/" + std::to_string(tid) + "/stat");
    std::string line;
    std::getline(stat, line);
    const auto after_name = line.rfind(')'); // the name may hold spaces
    return after_name != std::string::npos && after_name + 2 < line.size() && line[after_name + 2] == 'S';
}

// A thread that waits up to 5 s for a connection (then sets `served`, and
// holds it until `done`), once it is in line and asleep (not still on its way
// to sleep: then a wake-up would cost it nothing).
template <class Pool>
std::thread queue_one(Pool& pool, std::atomic<bool>& served, const std::atomic<bool>& done,
                      pid_t* waiter_tid = nullptr) {
    const std::size_t before = pool.stats().waiting;
    std::atomic<pid_t> tid{0};
    std::thread waiter([&pool, &served, &done, &tid] {
        tid = static_cast<pid_t>(::syscall(SYS_gettid));
        try {
            auto l = pool.acquire_for(5s);
            served = true;
            while (!done) std::this_thread::yield(); // so that the test's own try sees it out, not idle
        } catch (const timeout_error&) {}
    });
    while (pool.stats().waiting == before || !asleep(tid)) std::this_thread::yield();
    if (waiter_tid) *waiter_tid = tid;
    return waiter;
}

// Keeps the sleeping thread `waiter` off the CPU while this thread runs: both
// on this thread's CPU, the waiter under SCHED_IDLE, which never preempts a
// normal thread when it wakes. Without this a loaded machine wakes the waiter
// straight onto the releasing thread's CPU, ahead of it, every time.
class waiter_behind_me {
public:
    // Never throws (a REQUIRE here would unwind past the joinable waiter
    // thread): a call that fails is named by error(), and the caller reports
    // it once the waiter is joined.
    explicit waiter_behind_me(pid_t waiter) noexcept {
        if (::sched_getaffinity(0, sizeof old_, &old_) != 0) {
            fail("sched_getaffinity of this thread");
            return;
        }
        const int cpu = ::sched_getcpu();
        if (cpu < 0) {
            fail("sched_getcpu");
            return;
        }
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        const sched_param idle{};
        if (::sched_setscheduler(waiter, SCHED_IDLE, &idle) != 0) {
            fail("sched_setscheduler(SCHED_IDLE)");
            return;
        }
        if (::sched_setaffinity(waiter, sizeof one, &one) != 0) {
            fail("sched_setaffinity of the waiter");
            return;
        }
        if (::sched_setaffinity(0, sizeof one, &one) != 0) {
            fail("sched_setaffinity of this thread");
            return;
        }
        pinned_ = true;
    }
    ~waiter_behind_me() {
        if (pinned_) ::sched_setaffinity(0, sizeof old_, &old_);
    }
    waiter_behind_me(const waiter_behind_me&) = delete;
    waiter_behind_me& operator=(const waiter_behind_me&) = delete;
    // Empty when the waiter is behind this thread; else the call that failed.
    const std::string& error() const noexcept { return error_; }

private:
    void fail(const char* call) noexcept {
        try {
            error_ = std::string(call) + " failed: " + std::strerror(errno);
        } catch (...) {}
    }
    cpu_set_t old_;
    bool pinned_ = false;
    std::string error_;
};
} // namespace

TEMPLATE_LIST_TEST_CASE("waiting policies: many threads, every cycle served, nothing lost", "[concurrency]",
                        waiting_policies) {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::bounded, TestType> pool{fake_connector<>{s},
                                                overflow::bounded{.size = 2, .max_overflow = 2, .wait = 30s}};
    std::atomic<int> done{0}, handed_closed{0}, shared{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < 500; ++i) {
                auto l = pool.acquire();
                if (l.get()->closed) ++handed_closed;
                if (l.get()->leases.fetch_add(1) != 0) ++shared;
                l.get()->leases.fetch_sub(1);
                ++done;
            }
        });
    for (auto& t : threads) t.join();
    CHECK(done == 8 * 500);
    CHECK(handed_closed == 0);
    CHECK(shared == 0);
    const auto st = pool.stats();
    CHECK(st.in_use == 0);
    CHECK(st.waiting == 0);
    CHECK(st.size <= 4);
    CHECK(static_cast<int>(st.size) == s->open());
    CHECK(s->misuse == 0);
}

TEMPLATE_LIST_TEST_CASE("waiting policies: idle connections are a stack, the last returned is reused first",
                        "[concurrency]", waiting_policies) {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed, TestType> pool{fake_connector<>{s}, overflow::fixed{.size = 3, .wait = 1s}};
    auto a = pool.acquire(), b = pool.acquire(), c = pool.acquire();
    fake_connection* const second = b.get();
    a.release();
    c.release();
    b.release();
    CHECK(pool.acquire().get() == second);
}

TEST_CASE("concurrency policies: nonsense numbers are config_errors naming the field and the range", "[concurrency]") {
    auto s = std::make_shared<fake_server>();
    using fifo = null_pool<overflow::fixed, concurrency::mutex>;
    using barging = null_pool<overflow::fixed, concurrency::barging>;
    CHECK_THROWS_MATCHES((fifo{fake_connector<>{s}, concurrency::mutex{.spin = -1us}}), config_error,
                         Catch::Matchers::Message("pqpool: concurrency::mutex: spin is -1 µs; it must be between 0 "
                                                  "(never spin) and 1000 µs (a hold longer than that is not worth "
                                                  "a CPU spinning through it)"));
    CHECK_THROWS_WITH((fifo{fake_connector<>{s}, concurrency::mutex{.spin = 1001us}}),
                      Catch::Contains("concurrency::mutex: spin is 1001 µs"));
    CHECK_THROWS_WITH((barging{fake_connector<>{s}, concurrency::barging{.spin = 2ms}}),
                      Catch::Contains("concurrency::barging: spin is 2000 µs"));
    CHECK_THROWS_WITH(
        (barging{fake_connector<>{s}, concurrency::barging{.patience = -1us}}),
        Catch::Contains("concurrency::barging: patience is -1 µs; it must be 0 (never overtaken) or more"));
    CHECK_NOTHROW(fifo{fake_connector<>{s}, concurrency::mutex{.spin = 0us}});
    CHECK_NOTHROW(fifo{fake_connector<>{s}, concurrency::mutex{.spin = 1000us}});
    CHECK_NOTHROW(barging{fake_connector<>{s}, concurrency::barging{.patience = std::chrono::hours{24 * 365 * 1000}}});
    CHECK(s->started == 0);
}

// Barging: the releasing thread may take its connection straight back. The
// waiter sleeps (spin 0) and is kept off this thread's CPU until this thread
// blocks (waiter_behind_me), so the releasing thread asks first; over 20
// rounds it must win at least once (under FIFO it never does: the stress test
// "no barging" checks that), and the waiter is served every round.
TEST_CASE("concurrency::barging: a thread that returns a connection may take it back ahead of a waiter",
          "[concurrency]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed, concurrency::barging> pool{
        fake_connector<>{s}, overflow::fixed{.size = 1, .wait = 30s},
        concurrency::barging{.spin = 0us, .patience = std::chrono::hours{1}}};
    int barged = 0;
    for (int round = 0; round < 20; ++round) {
        auto held = pool.acquire();
        std::atomic<bool> served{false}, done{false};
        pid_t tid = 0;
        std::thread waiter = queue_one(pool, served, done, &tid);
        std::string pin_error;
        {
            waiter_behind_me behind{tid};
            pin_error = behind.error();
            held.release();
            if (pin_error.empty())
                if (auto again = pool.try_acquire()) {
                    ++barged;
                    CHECK(pool.stats().waiting == 1); // the waiter is still in line, not served
                }
        }
        done = true;
        waiter.join(); // the lease taken back was returned at the end of the if: the waiter gets it
        if (!pin_error.empty()) FAIL("could not keep the waiter off this thread's CPU: " << pin_error);
        CHECK(served);
    }
    CHECK(barged >= 1);
    CHECK(s->connects == 1);
}

// A returned connection nudges the first waiter; without the nudge it would
// wait until its patience (an hour here) ran out.
TEST_CASE("concurrency::barging: a connection returned while callers wait reaches the first of them", "[concurrency]") {
    auto s = std::make_shared<fake_server>();
    for (const auto spin : {0us, 1000us}) {
        null_pool<overflow::fixed, concurrency::barging> pool{
            fake_connector<>{s}, overflow::fixed{.size = 2, .wait = 30s},
            concurrency::barging{.spin = spin, .patience = std::chrono::hours{1}}};
        auto a = pool.acquire(), b = pool.acquire();
        std::atomic<int> served{0};
        std::vector<std::thread> waiters;
        for (int i = 0; i < 3; ++i) {
            waiters.emplace_back([&] {
                try {
                    auto l = pool.acquire_for(10s);
                    ++served;
                    while (served < 2) std::this_thread::yield(); // hold until two are served
                } catch (const timeout_error&) {}
            });
            while (pool.stats().waiting != static_cast<std::size_t>(i + 1)) std::this_thread::yield();
        }
        a.release();
        b.release(); // both go idle; two waiters must take them, the third the first one returned
        for (auto& w : waiters) w.join();
        CHECK(served == 3);
        CHECK(pool.stats() == pool_stats{.size = 2, .idle = 2, .in_use = 0, .opening = 0, .overflow = 0, .waiting = 0});
    }
}

// Once a waiter has waited past its patience it is overtaken no more: a
// connection returned goes to it, even when the returning thread asks again
// at once.
TEST_CASE("concurrency::barging: a waiter past its patience gets the next connection returned", "[concurrency]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed, concurrency::barging> pool{fake_connector<>{s}, overflow::fixed{.size = 1, .wait = 30s},
                                                          concurrency::barging{.spin = 0us, .patience = 20ms}};
    for (int round = 0; round < 3; ++round) {
        auto held = pool.acquire();
        std::atomic<bool> served{false}, done{false};
        std::thread waiter = queue_one(pool, served, done);
        // Past its patience, with room for a slow wake-up on a loaded machine.
        std::this_thread::sleep_for(20ms + 300ms);
        held.release();
        const bool barged = pool.try_acquire().has_value(); // returned at once if it got one
        done = true;
        waiter.join();
        CHECK_FALSE(barged);
        CHECK(served);
    }
}

// The lock and the hand-over slot on their own.
TEST_CASE("detail::pool_lock excludes: counts under the lock from several threads add up", "[concurrency]") {
    detail::pool_lock lock;
    long count = 0; // no atomic: only the lock protects it (and ThreadSanitizer watches)
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&] {
            ++ready;
            while (ready < 4) std::this_thread::yield(); // all at once, or they may run one after another
            for (int i = 0; i < 20000; ++i) {
                std::lock_guard guard(lock);
                const long seen = count; // a read-modify-write with room for another thread in between
                detail::cpu_relax();
                count = seen + 1;
            }
        });
    for (auto& t : threads) t.join();
    CHECK(count == 4 * 20000);
    CHECK(lock.try_lock());
    CHECK_FALSE(lock.try_lock());
    lock.unlock();
}

TEST_CASE("detail::spin_gauge: waiters spin while recent waits were short, and never past the limit", "[concurrency]") {
    if (std::thread::hardware_concurrency() <= 1) FAIL("this test needs a machine with more than one CPU");
    detail::spin_gauge g;
    CHECK(g.budget(20us) > 0ns);
    CHECK(g.budget(0us) == 0ns);
    for (int i = 0; i < 50; ++i) g.record(1us);
    CHECK(g.budget(20us) >= 2us);
    CHECK(g.budget(20us) <= 20us);
    CHECK(g.budget(1us) <= 1us);
    for (int i = 0; i < 50; ++i) g.record(5ms); // long holds: spinning would be wasted
    CHECK(g.budget(20us) == 0ns);
    for (int i = 0; i < 100; ++i) g.record(500ns); // short again
    CHECK(g.budget(20us) > 0ns);
}

// "Nobody spins in a process that may use one CPU only": the count is the
// affinity mask's, not the machine's. (Checked in a child, whose mask is
// narrowed first; usable_cpus() reads count_usable_cpus() once.)
TEST_CASE("detail::count_usable_cpus: a process confined to one CPU counts one, whatever the machine has",
          "[concurrency]") {
    if (std::thread::hardware_concurrency() <= 1) FAIL("this test needs a machine with more than one CPU");
    CHECK(detail::count_usable_cpus() > 1);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(::sched_getcpu(), &one);
        if (::sched_setaffinity(0, sizeof one, &one) != 0) ::_exit(2);
        ::_exit(detail::count_usable_cpus() == 1 ? 0 : 1);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}

namespace {
enum class slot_state : unsigned char { waiting, served };
using slot = detail::handoff<slot_state, slot_state::waiting>;
} // namespace

TEST_CASE(
    "detail::handoff: an outcome reaches a spinning waiter and a sleeping one, and a wait that ends returns locked",
    "[concurrency]") {
    detail::pool_lock lock;
    detail::spin_gauge gauge;
    for (const auto spin : {0ns, std::chrono::nanoseconds{1ms}, std::chrono::nanoseconds{200ms}}) {
        slot w;
        std::atomic<bool> in{false};
        std::thread publisher([&] {
            while (!in) std::this_thread::yield();
            std::lock_guard guard(lock);
            w.publish(slot_state::served);
        });
        std::unique_lock l(lock);
        in = true;
        w.wait(l, spin, std::chrono::steady_clock::now() + 30s, gauge);
        CHECK_FALSE(l.owns_lock());
        CHECK(w.state() == slot_state::served);
        publisher.join();
    }
    slot w;
    std::unique_lock l(lock);
    const auto start = std::chrono::steady_clock::now();
    w.wait(l, std::chrono::nanoseconds{1ms}, start + 20ms, gauge);
    CHECK(l.owns_lock());
    CHECK(w.state() == slot_state::waiting);
    CHECK(std::chrono::steady_clock::now() - start >= 20ms);
}

// A waiter spins "never past its own deadline": with a deadline 5 ms away and
// a spin of 2 s, the wait ends at the deadline, not after the spin. (A bound
// on a wait, with a margin of seconds, not a measure of speed.)
TEST_CASE("detail::handoff: a spin ends at the waiter's deadline", "[concurrency]") {
    detail::pool_lock lock;
    detail::spin_gauge gauge;
    slot w;
    std::unique_lock l(lock);
    const auto start = std::chrono::steady_clock::now();
    w.wait(l, std::chrono::nanoseconds{2s}, start + 5ms, gauge);
    const auto took = std::chrono::steady_clock::now() - start;
    CHECK(l.owns_lock());
    CHECK(w.state() == slot_state::waiting);
    CHECK(took >= 5ms);
    CHECK(took < 1s);
}

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PQPOOL_TEST_UNDER_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define PQPOOL_TEST_UNDER_TSAN 1
#endif

// Not built under ThreadSanitizer: its own handler takes the child's abort and
// (with halt_on_error) exits with its own code instead of dying by SIGABRT.
// The g++ and ASan suites run it.
#if !defined(NDEBUG) && !defined(PQPOOL_TEST_UNDER_TSAN)
TEST_CASE("concurrency::single_thread: in debug builds, use from a second thread aborts", "[concurrency]") {
    // Run in a child process: the assertion aborts it.
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::alarm(10);
        auto s = std::make_shared<fake_server>();
        null_pool<overflow::fixed, concurrency::single_thread> pool{fake_connector<>{s}, overflow::fixed{.size = 2}};
        { auto first = pool.acquire(); } // this thread owns the pool now
        std::thread other([&] { auto l = pool.acquire(); });
        other.join();
        ::_exit(0); // not reached when the assertion works
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGABRT);
}
#endif
