#pragma once

/// \file
/// Concurrency: how the pool's state is protected.
///
/// | policy          | cost per acquire and per release          |
/// |-----------------|-------------------------------------------|
/// | `mutex`         | one uncontended lock and unlock (default)  |
/// | `single_thread` | nothing; callers never wait                |

#include <cassert>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace pqpool {

/// The category tag of concurrency policies.
struct concurrency_tag {};

/// A concurrency policy.
///
/// Minimal complete definition: `category` (= `concurrency_tag`),
/// `mutex_type` (BasicLockable), `condition_type` (with `notify_one()` and
/// `wait_until(std::unique_lock<mutex_type>&, time_point)` as
/// `std::condition_variable` has them) and `static constexpr bool can_wait`.
/// Laws: when `can_wait` is false no caller ever blocks: an acquire that would
/// have to wait throws `exhausted_error` instead.
template <class P>
concept concurrency_policy = std::same_as<typename P::category, concurrency_tag> && std::default_initializable<P> &&
    requires(typename P::mutex_type& m, typename P::condition_type& cv) {
        { P::can_wait } -> std::convertible_to<bool>;
        m.lock();
        m.unlock();
        cv.notify_one();
    };

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

struct no_condition {
    void notify_one() noexcept {}
    template <class Lock, class TimePoint>
    std::cv_status wait_until(Lock&, TimePoint) noexcept {
        return std::cv_status::timeout;
    }
};

} // namespace detail

namespace concurrency {

/// A `std::mutex` guards the pool; waiters block on a condition variable each
/// and are served first come, first served. The default.
struct mutex {
    using category = concurrency_tag;
    using mutex_type = std::mutex;
    using condition_type = std::condition_variable;
    static constexpr bool can_wait = true;
};

/// No locking, for a pool confined to one thread or one event loop. An
/// acquire that would have to wait throws `exhausted_error` instead (nothing
/// else could return a connection meanwhile). Debug builds assert that only
/// one thread uses the pool.
struct single_thread {
    using category = concurrency_tag;
    using mutex_type = detail::single_thread_mutex;
    using condition_type = detail::no_condition;
    static constexpr bool can_wait = false;
};

/// What `pqpool::pool<>` uses when no concurrency policy is named.
using default_policy = mutex;

} // namespace concurrency
} // namespace pqpool
