#pragma once

/// \file
/// Concurrency: how the pool's state is protected, and who gets a returned
/// connection while callers wait.
///
/// | policy          | fairness | cost per acquire and per release, uncontended | under contention |
/// |-----------------|----------|-------------------------------------------|------------------|
/// | `mutex`         | first come, first served (the default) | one compare-exchange and one exchange (a lock of its own, no call into the C library) | a returned connection goes to the caller that waited longest; the waiter spins for it briefly, so a short hold is handed over with one store, a long one with a wake-up (a futex call and a context switch) |
/// | `barging`       | overtaking bounded by `patience` | as `mutex` | a returned connection goes back on the idle stack (LIFO), so the thread that returned it, or any arrival, may take it ahead of the waiters; the first waiter is woken to look only when nobody is awake already |
/// | `single_thread` | –        | nothing                                    | never waits: `exhausted_error` |

#include <pqpool/detail/check.hpp>
#include <pqpool/detail/wait.hpp>

#include <cassert>
#include <chrono>
#include <concepts>
#include <string>
#include <thread>

namespace pqpool {

/// The category tag of concurrency policies.
struct concurrency_tag {};

/// A concurrency policy.
///
/// Minimal complete definition: `category` (= `concurrency_tag`),
/// `mutex_type` (BasicLockable: guards the pool's state), `static constexpr
/// bool can_wait` and `static constexpr bool fifo`; when `can_wait`,
/// `std::chrono::nanoseconds max_spin() const` (how long a waiter may spin
/// for a hand-over before it sleeps); when not `fifo`,
/// `std::chrono::nanoseconds max_patience() const` (how long a waiter may be
/// overtaken). Optionally `void check() const` throws `config_error` for
/// numbers out of range.
/// Laws: when `can_wait` is false no caller ever blocks: an acquire that would
/// have to wait throws `exhausted_error` instead. When `fifo`, a returned
/// connection goes to the waiter that came first; otherwise a waiter is
/// overtaken for at most `max_patience()`, after which connections returned go
/// to it before anyone who came later.
template <class P>
concept concurrency_policy = std::same_as<typename P::category, concurrency_tag> && std::default_initializable<P> &&
    requires(typename P::mutex_type& m) {
    { P::can_wait } -> std::convertible_to<bool>;
    { P::fifo } -> std::convertible_to<bool>;
    m.lock();
    m.unlock();
} &&(!P::can_wait ||
     requires(const P& p) {
         { p.max_spin() } -> std::same_as<std::chrono::nanoseconds>;
     }) &&
    (P::fifo || requires(const P& p) {
        { p.max_patience() } -> std::same_as<std::chrono::nanoseconds>;
    });

namespace detail {

// No locking. In debug builds it remembers the first thread that used it and
// asserts that no other does, which catches a single_thread pool shared by
// mistake.
class single_thread_mutex {
public:
    void lock() noexcept {
#ifndef NDEBUG
        const auto me = std::this_thread::get_id();
        if (owner_ == std::thread::id{}) owner_ = me;
        assert(owner_ == me && "pqpool: a concurrency::single_thread pool was used from a second thread");
#endif
    }
    void unlock() noexcept {}

private:
#ifndef NDEBUG
    std::thread::id owner_{};
#endif
};

inline void check_spin(const char* where, std::chrono::microseconds spin) {
    if (spin.count() < 0 || spin > std::chrono::milliseconds{1})
        fail_check(
            where, "spin", std::to_string(spin.count()) + " µs",
            "between 0 (never spin) and 1000 µs (a hold longer than that is not worth a CPU spinning through it)");
}

} // namespace detail

namespace concurrency {

/// First come, first served (the default): a returned connection goes to the
/// caller that has waited longest, and a thread that returns a connection and
/// asks again queues behind the callers already waiting.
///
/// Cost: uncontended, one compare-exchange to lock and one exchange to unlock
/// at acquire and at release. A caller that must wait spins (with a pause
/// instruction) for up to about twice the recent average wait, at most
/// `spin`, never past its own deadline, only while that average has been
/// shorter than `spin`, and only when the pool has a CPU to spare for it (the
/// first waiter a connection in use could reach, and no more spinners than
/// half the CPUs the process may use; the pool does not see other pools'
/// spinners or other processes' load: a spinning waiter yields the CPU after
/// 2 µs but stays runnable); then it sleeps. A hand-over to
/// a spinning waiter is one store; to a sleeping one a futex wake-up and a
/// context switch (microseconds to tens of microseconds on a VM, during which
/// the connection is unused). The default `spin` of 100 µs lets a waiter spin
/// through holds of up to about 50 µs (a query on a local server): measured
/// with 50 µs holds, 2 threads on one connection, it brought FIFO from 1.55×
/// to 0.94× the hand-written pool's time per cycle (docs/benchmarks.md). Every
/// cycle under contention is a hand-over between threads, so with holds
/// shorter than a microsecond it costs several times what `barging` does.
struct mutex {
    using category = concurrency_tag;
    using mutex_type = detail::pool_lock;
    static constexpr bool can_wait = true;
    static constexpr bool fifo = true;
    /// The longest a waiter spins for a hand-over before it sleeps (0 to
    /// 1000 µs; 0: sleep at once); waits that last longer than this on
    /// average are not spun for at all. Nobody spins in a process that may use
    /// one CPU only (its affinity mask, e.g. under `taskset` or a cpuset).
    std::chrono::microseconds spin{100};

    void check() const { detail::check_spin("concurrency::mutex", spin); }
    std::chrono::nanoseconds max_spin() const noexcept { return spin; }
};

/// Barging: a returned connection goes back on the idle stack (last in, first
/// out), so the thread that returned it, or any caller that arrives, may take
/// it ahead of callers already waiting; the first waiter is woken to come and
/// look (only when no waiter is awake already), and keeps its place in line.
///
/// Unfairness is bounded: a waiter is overtaken for at most `patience`; from
/// then on connections returned are handed to it (and to other waiters that
/// ran out of patience, first come, first served) before anyone who came
/// later. So a caller waits at most about `patience` longer than it would
/// have under `mutex`.
///
/// Cost: as `mutex` uncontended. Under contention the releasing thread keeps
/// going without a hand-over, which is what a hand-written pool over a mutex
/// and a condition variable does, minus its wake-up per release; throughput is
/// the highest of the three policies, and fairness over intervals shorter
/// than `patience` the lowest.
struct barging {
    using category = concurrency_tag;
    using mutex_type = detail::pool_lock;
    static constexpr bool can_wait = true;
    static constexpr bool fifo = false;
    /// The longest a waiter spins before it sleeps (0 to 1000 µs).
    std::chrono::microseconds spin{100};
    /// How long a waiter may be overtaken (at least 0; 0 makes this `mutex`
    /// with an idle stack for newcomers while nobody waits).
    std::chrono::microseconds patience{std::chrono::milliseconds{1}};

    void check() const {
        detail::check_spin("concurrency::barging", spin);
        if (patience.count() < 0)
            detail::fail_check("concurrency::barging", "patience", std::to_string(patience.count()) + " µs",
                               "0 (never overtaken) or more");
    }
    std::chrono::nanoseconds max_spin() const noexcept { return spin; }
    std::chrono::nanoseconds max_patience() const noexcept { return patience; }
};

/// No locking, for a pool confined to one thread or one event loop. An
/// acquire that would have to wait throws `exhausted_error` instead (nothing
/// else could return a connection meanwhile). Debug builds assert that only
/// one thread uses the pool.
struct single_thread {
    using category = concurrency_tag;
    using mutex_type = detail::single_thread_mutex;
    static constexpr bool can_wait = false;
    static constexpr bool fifo = true;
};

/// What `pqpool::pool<>` uses when no concurrency policy is named.
using default_policy = mutex;

} // namespace concurrency
} // namespace pqpool
