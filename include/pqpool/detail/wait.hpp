#pragma once

// The pool's waiting machinery, free of pool logic: the lock that guards a
// pool's state, the spin-then-sleep hand-over slot of one waiter, and the
// gauge that decides how long waiters spin.
//
// Why not std::mutex and one std::condition_variable per waiter: a pool's
// critical sections last tens of nanoseconds, and glibc's pthread_mutex_lock
// and unlock cost about 55 instructions per pair on top of the one atomic
// each needs; and a hand-over to a waiter asleep on a condition variable
// costs a futex wake-up and a context switch (microseconds on a virtual
// machine) while the connection sits unused. Here a hand-over to a waiter that
// is still spinning is one store.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#if defined(__linux__)
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace pqpool::detail {

// One "I am spinning" hint to the CPU (lets the sibling hyperthread run, and
// saves power); about 30 ns on recent x86 cores, a few on older ones.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield" ::: "memory");
#endif
}

// A lock for short critical sections. Uncontended: one compare-exchange to
// lock, one exchange to unlock, no call into the C library. Contended: the
// thread sleeps at once on a futex (as glibc's own mutex does; spinning for
// the lock keeps its cache line moving between CPUs while its holder would
// rather go on), and unlock wakes one sleeper only when one may be asleep.
// The classic three-state futex lock (Drepper, "Futexes are tricky", mutex 3).
class pool_lock {
public:
    pool_lock() noexcept = default;
    pool_lock(const pool_lock&) = delete;
    pool_lock& operator=(const pool_lock&) = delete;

    void lock() noexcept {
        int expected = free;
        if (!state().compare_exchange_strong(expected, held, std::memory_order_acquire, std::memory_order_relaxed))
            [[unlikely]]
            lock_contended();
    }
    bool try_lock() noexcept {
        int expected = free;
        return state().compare_exchange_strong(expected, held, std::memory_order_acquire, std::memory_order_relaxed);
    }
    // Touches nothing of *this after the exchange but the futex address
    // itself, so a thread may unlock and another free the lock at once (as a
    // pool core deletes itself when the last count goes under its lock).
    void unlock() noexcept {
        if (state().exchange(free, std::memory_order_release) == contended) [[unlikely]]
            wake_one();
    }

private:
    static constexpr int free = 0, held = 1, contended = 2; // contended: held, and someone may sleep

    std::atomic_ref<int> state() noexcept { return std::atomic_ref<int>(state_); }

    [[gnu::noinline]] void lock_contended() noexcept {
        while (state().exchange(contended, std::memory_order_acquire) != free) sleep_while_contended();
    }
    void sleep_while_contended() noexcept {
#if defined(__linux__)
        ::syscall(SYS_futex, &state_, FUTEX_WAIT_PRIVATE, contended, nullptr, nullptr, 0);
#else
        state().wait(contended, std::memory_order_relaxed);
#endif
    }
    void wake_one() noexcept {
#if defined(__linux__)
        ::syscall(SYS_futex, &state_, FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
#else
        state().notify_one();
#endif
    }

    alignas(std::atomic_ref<int>::required_alignment) int state_ = free; // only through state() and the futex
};

// The CPUs the calling thread may run on (its affinity mask, which taskset
// and cpusets narrow; std::thread::hardware_concurrency() counts the
// machine's).
inline unsigned count_usable_cpus() noexcept {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (::sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return static_cast<unsigned>(CPU_COUNT(&set));
    return std::max(1u, std::thread::hardware_concurrency());
}

// The same, read once per process: a spinner needs a CPU of its own beside
// the holders'.
inline unsigned usable_cpus() noexcept {
    static const unsigned n = count_usable_cpus();
    return n;
}

// How long a waiter spins before it sleeps, learned from how long waits have
// lasted lately (an average over the last few, racy by design: it is a
// hint). A waiter spins only while recent waits were shorter than the
// policy's limit, and then for up to about twice the recent average: short
// holds are handed over to a spinning waiter, without a system call; long
// holds cost no spinning at all. With one usable CPU nobody spins (the
// holder needs that CPU to finish).
class spin_gauge {
public:
    std::chrono::nanoseconds budget(std::chrono::nanoseconds limit) const noexcept {
        const std::int64_t average = average_ns_.load(std::memory_order_relaxed);
        if (usable_cpus() <= 1 || limit.count() <= 0 || average > limit.count()) return {};
        return std::min(limit, std::chrono::nanoseconds{2 * average + 2000});
    }
    void record(std::chrono::nanoseconds waited) noexcept {
        const std::int64_t average = average_ns_.load(std::memory_order_relaxed);
        average_ns_.store(average + (waited.count() - average) / 8, std::memory_order_relaxed);
    }

private:
    std::atomic<std::int64_t> average_ns_{0};
};

// Spins until done() or `budget` has passed since `start`: pauses for the
// first couple of microseconds, then yields the CPU between looks (on a busy
// machine the thread it waits for may need this CPU to get anywhere); reads
// the clock once every few pauses (a read costs more than a pause on some
// machines).
template <class Done>
bool spin_until(Done done, std::chrono::steady_clock::time_point start, std::chrono::nanoseconds budget) noexcept {
    for (;;) {
        for (int i = 0; i < 8; ++i) {
            if (done()) return true;
            cpu_relax();
        }
        const auto spent = std::chrono::steady_clock::now() - start;
        if (spent >= budget) return done();
        if (spent > std::chrono::microseconds{2}) std::this_thread::yield();
    }
}

// One waiter's hand-over slot. The pool publishes an outcome into it under
// the pool's lock; the waiter spins on it for a while, then sleeps on a
// condition variable of its own. The waiter may leave, destroying the slot,
// as soon as it has seen an outcome it can trust, so a publisher touches
// nothing of the slot afterwards:
// - to a waiter that spins (`spinning_`, set and cleared by the waiter under
//   the pool's lock), the outcome is one release store and nothing more;
// - to one that may sleep, the store and the notify happen under `m_`, and
//   the waiter reads the outcome under `m_` or under the pool's lock, so it
//   cannot leave before the publisher has let go of `m_`.
template <class State, State Waiting>
class handoff {
public:
    // Under the pool's lock.
    void publish(State s) noexcept {
        if (spinning_) {
            state_.store(s, std::memory_order_release);
            return;
        }
        std::lock_guard guard(m_);
        state_.store(s, std::memory_order_relaxed);
        published_ = std::chrono::steady_clock::now(); // (a wake-up costs far more than this read)
        cv_.notify_one();
    }
    // Under the pool's lock, or by the waiter once wait() has returned.
    State state() const noexcept { return state_.load(std::memory_order_relaxed); }
    // The waiter itself, under the pool's lock: takes back an outcome that was
    // only a nudge (barging: "a connection went idle, come and look"), or
    // serves itself.
    void set(State s) noexcept { state_.store(s, std::memory_order_relaxed); }

    // The waiter, holding the pool's lock through `lock`: waits for an
    // outcome until `until`, spinning for up to `spin` first. Returns the
    // outcome it saw, with the lock released (and records in `gauge` how
    // long it took to come: to a sleeping waiter, until it was published,
    // since the wake-up is not what spinning would have waited for); or
    // `Waiting`, with the lock held, when none came by `until`. The outcome
    // returned is the one to act on: a later publish (barging: a waiter
    // nudged, then served) may already have changed state(), and only under
    // the pool's lock may the waiter look again.
    template <class Lock, class TimePoint>
    State wait(Lock& lock, std::chrono::nanoseconds spin, TimePoint until, spin_gauge& gauge) {
        State seen = state();
        if (seen != Waiting) {
            lock.unlock();
            return seen;
        }
        const auto start = std::chrono::steady_clock::now();
        const auto served = [&] {
            gauge.record(std::chrono::steady_clock::now() - start);
            return seen;
        };
        const auto published = [&] {
            gauge.record(published_ - start);
            return seen;
        };
        // Never past the caller's deadline (the spin is in nanoseconds, as
        // fine as a deadline's duration gets, so converting it cannot overflow).
        if (spin.count() > 0) {
            auto left = until - TimePoint::clock::now();
            if (left <= decltype(left)::zero())
                spin = {};
            else if (left < std::chrono::duration_cast<decltype(left)>(spin))
                spin = std::chrono::duration_cast<std::chrono::nanoseconds>(left);
        }
        spinning_ = spin.count() > 0;
        if (spinning_) {
            lock.unlock();
            const auto came = [&] { return (seen = state_.load(std::memory_order_acquire)) != Waiting; };
            if (spin_until(came, start, spin)) return served();
            lock.lock();
            spinning_ = false;
            if ((seen = state()) != Waiting) {
                lock.unlock();
                return served();
            }
        }
        lock.unlock();
        {
            std::unique_lock guard(m_);
            while ((seen = state_.load(std::memory_order_relaxed)) == Waiting)
                if (cv_.wait_until(guard, until) == std::cv_status::timeout) break;
            seen = state_.load(std::memory_order_relaxed);
            if (seen != Waiting) return published();
        }
        lock.lock();
        if ((seen = state()) != Waiting) { // published between the timeout and the lock
            lock.unlock();
            return published();
        }
        return Waiting;
    }

private:
    std::atomic<State> state_{Waiting};
    bool spinning_ = false;
    std::chrono::steady_clock::time_point published_{}; // under m_
    std::mutex m_;
    std::condition_variable cv_;
};

} // namespace pqpool::detail
