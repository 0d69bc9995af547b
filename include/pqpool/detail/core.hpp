#pragma once

// The pool's state and algorithms. basic_pool is a handle to one heap-allocated
// pool_core so that leases may outlive the pool: the core deletes itself when
// the pool is gone and the last lease, waiter or connect has left it. That
// costs nothing on the hot path: it reuses the counts stats() needs anyway.

#include <pqpool/connection_info.hpp>
#include <pqpool/detail/clock.hpp>
#include <pqpool/error.hpp>
#include <pqpool/lease.hpp>
#include <pqpool/policies/observability.hpp>
#include <pqpool/stats.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace pqpool::detail {

template <class Clock, class Duration>
void sleep_for(Duration d) {
    if constexpr (requires { Clock::sleep_for(d); })
        Clock::sleep_for(d); // a manual clock in unit tests advances instead of sleeping
    else
        std::this_thread::sleep_for(d);
}

template <class TimePoint, class Duration>
TimePoint saturating_add(TimePoint t, Duration d) noexcept {
    using dur = typename TimePoint::duration;
    if (d.count() <= 0) return t;
    if (std::chrono::duration_cast<dur>(d) >= TimePoint::max() - t) return TimePoint::max();
    return t + std::chrono::duration_cast<dur>(d);
}

inline std::string describe(const pool_stats& s) {
    return "size " + std::to_string(s.size) + " (" + std::to_string(s.in_use) + " in use, " +
           std::to_string(s.idle) + " idle, " + std::to_string(s.opening) + " opening), " +
           std::to_string(s.waiting) + " waiting";
}

template <class Connector, class Validation, class Recycling, class Overflow, class Retry, class ForkSafety,
          class Concurrency, class Observability>
class pool_core {
public:
    using clock = typename Connector::clock;
    using time_point = typename clock::time_point;
    using handle = typename Connector::handle;
    using info = connection_info<handle, time_point>;
    using lease_type = pqpool::lease<pool_core>;
    static constexpr bool fork_detects = ForkSafety::detects;

    pool_core(Connector c, Validation v, Recycling r, Overflow o, Retry rt, ForkSafety f, Observability ob)
        : connector_(std::move(c)),
          validation_(std::move(v)),
          recycling_(std::move(r)),
          overflow_(std::move(o)),
          retry_(std::move(rt)),
          fork_(std::move(f)),
          observer_(std::move(ob)),
          generation_(fork_.generation()),
          adopting_(generation_.load()) {
        idle_.reserve(std::min<std::size_t>(overflow_.keep_idle(), 1024));
    }

    const Overflow& overflow() const noexcept { return overflow_; }
    const Observability& observer() const noexcept { return observer_; }
    const Connector& connector() const noexcept { return connector_; }

    lease_type acquire(std::chrono::milliseconds timeout) {
        check_fork();
        // The fast path: an idle connection, nobody waiting. One lock, a pop.
        mutex_.lock();
        if (!closed_ && head_ == nullptr && !idle_.empty()) [[likely]] {
            info* c = idle_.back();
            idle_.pop_back();
            ++in_use_;
            mutex_.unlock();
            if (hand_out(c)) [[likely]]
                return lease_type(this, c);
        } else {
            mutex_.unlock();
        }
        return acquire_slow(timeout);
    }

    // Everything but the fast path: waiting, connecting, replacing a
    // connection that failed validation. Kept out of line so that the fast
    // path stays small enough to inline into the caller.
    [[gnu::noinline]] lease_type acquire_slow(std::chrono::milliseconds timeout) {
        std::optional<time_point> deadline; // read the clock only if we must wait or connect
        const auto get_deadline = [&] {
            if (!deadline) deadline = saturating_add(clock::now(), timeout);
            return *deadline;
        };
        for (;;) {
            grant g = take<true>(timeout, get_deadline);
            if (g.kind == grant::connection) {
                if (hand_out(g.conn)) [[likely]]
                    return lease_type(this, g.conn);
                continue;
            }
            return open_reserved(timeout.count() > 0 ? get_deadline() : time_point::max());
        }
    }

    std::optional<lease_type> try_acquire() {
        check_fork();
        const auto no_deadline = [] { return time_point::max(); };
        for (;;) {
            grant g = take<false>(std::chrono::milliseconds{0}, no_deadline);
            if (g.kind == grant::nothing) return std::nullopt;
            if (g.kind == grant::connection) {
                if (hand_out(g.conn)) return lease_type(this, g.conn);
                continue;
            }
            return open_reserved(time_point::max());
        }
    }

    // Runs work(handle) on a lease; when the connection is lost during it,
    // again on a fresh one, with the retry policy's budget and backoff.
    template <class F>
    std::invoke_result_t<F&, handle> run(F& work) {
        using result = std::invoke_result_t<F&, handle>;
        for (unsigned failures = 0;;) {
            lease_type l = acquire(overflow_.timeout());
            const handle h = l.get();
            const auto retry_after_loss = [&]() -> bool {
                if (!connector_.broken(h)) return false;
                l.mark_broken();
                const auto delay = retry_.next_delay(++failures);
                if (!delay) return false;
                l.release();
                observer_.on_event(event::retry);
                sleep_for<clock>(*delay);
                return true;
            };
            if constexpr (std::is_void_v<result>) {
                try {
                    work(h);
                } catch (...) {
                    if (retry_after_loss()) continue;
                    throw;
                }
                if (retry_after_loss()) continue;
                return;
            } else {
                std::optional<result> r;
                try {
                    r.emplace(work(h));
                } catch (...) {
                    if (retry_after_loss()) continue;
                    throw;
                }
                if (retry_after_loss()) continue;
                return std::move(*r);
            }
        }
    }

    // Called by a lease. Cleaning (recycling, maybe a ROLLBACK) and closing
    // happen outside the lock; a connection is counted until it is closed, so
    // the pool never has more open than its overflow policy allows.
    void release(info* c, bool broken) noexcept {
        if constexpr (fork_detects) {
            if (!current(*c)) [[unlikely]] {
                release_inherited(c);
                return;
            }
        }
        const time_point now = timed ? coarse_now<clock>() : time_point{};
        const bool keep = !broken && recycling_.keep_on_release(connector_, *c, now);
        if constexpr (timed) c->last_used = now;
        // The fast path: back on the idle stack, nobody waiting, nothing to trim.
        mutex_.lock();
        if (keep && !closed_ && head_ == nullptr && idle_.size() < overflow_.keep_idle() &&
            idle_.size() < idle_.capacity()) [[likely]] {
            if constexpr (Recycling::uses_clock) {
                if (!idle_.empty() && !recycling_.keep_idle(*idle_.front(), now, idle_.size() + 1)) [[unlikely]] {
                    release_slow(c, keep, now);
                    return;
                }
            }
            idle_.push_back(c); // within capacity: cannot throw
            --in_use_;
            mutex_.unlock();
            return;
        }
        release_slow(c, keep, now);
    }

    // Called with the lock held: hand-off to a waiter, growing the idle
    // stack, trimming, or closing.
    [[gnu::noinline]] void release_slow(info* c, bool keep, [[maybe_unused]] time_point now) noexcept {
        if (keep && !closed_) {
            if (waiter* w = head_) {
                unlink(w); // the connection passes to the waiter; in_use_ is unchanged
                w->conn = c;
                w->state = waiter::got_connection;
                w->cv.notify_one();
                mutex_.unlock();
                return;
            }
            if (idle_.size() < overflow_.keep_idle() && push_idle(c)) {
                --in_use_;
                if constexpr (Recycling::uses_clock) {
                    // Lazy idle trimming: one look at the connection idle the longest.
                    if (!recycling_.keep_idle(*idle_.front(), now, idle_.size())) {
                        info* oldest = idle_.front();
                        idle_.erase(idle_.begin());
                        ++in_use_; // counted until closed
                        mutex_.unlock();
                        observer_.on_event(event::retired);
                        close_held(oldest);
                        return;
                    }
                }
                mutex_.unlock();
                return;
            }
        }
        mutex_.unlock();
        observer_.on_event(keep ? event::trimmed : event::retired);
        close_held(c);
    }

    // Trims idle connections (idle too long above the floor, or expired), then
    // opens connections up to the recycling policy's floor. Returns how many
    // it closed and opened. Throws what opening throws.
    maintenance_report maintain() {
        check_fork();
        maintenance_report report;
        if constexpr (Recycling::uses_clock) {
            std::vector<info*> stale;
            {
                std::lock_guard lock(mutex_);
                const time_point now = coarse_now<clock>();
                for (std::size_t i = 0; i < idle_.size();) {
                    if (recycling_.keep_idle(*idle_[i], now, idle_.size())) {
                        ++i;
                        continue;
                    }
                    stale.push_back(idle_[i]);
                    idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(i));
                    ++in_use_; // counted until closed
                }
            }
            for (info* c : stale) {
                observer_.on_event(event::retired);
                close_held(c);
            }
            report.closed = stale.size();
        }
        for (;;) {
            {
                std::lock_guard lock(mutex_);
                if (closed_ || head_ != nullptr || size() >= recycling_.idle_floor() || !may_open()) return report;
                ++opening_;
            }
            lease_type fresh = open_reserved(saturating_add(clock::now(), overflow_.timeout()));
            ++report.opened;
        } // `fresh` returns to the pool here
    }

    void close() noexcept {
        check_fork();
        std::vector<info*> idle;
        {
            std::lock_guard lock(mutex_);
            if (closed_) return;
            closed_ = true;
            idle.swap(idle_);
            // Each waiter leaves on its own (decrementing waiting_), after it wakes.
            while (waiter* w = head_) {
                unlink(w);
                w->state = waiter::closed;
                w->cv.notify_one();
            }
        }
        for (info* c : idle) {
            connector_.close(c->handle);
            delete c;
        }
    }

    // The pool object is gone; the core lives on while anyone is inside it.
    void shutdown() noexcept {
        close();
        std::unique_lock lock(mutex_);
        orphaned_ = true;
        leave(lock);
    }

    pool_stats stats() const {
        const_cast<pool_core*>(this)->check_fork();
        std::lock_guard lock(mutex_);
        return snapshot();
    }

    // Is this connection from this process (not inherited across fork)?
    bool current(const info& c) const noexcept {
        if constexpr (fork_detects)
            return c.generation == fork_.generation();
        else
            return true;
    }

private:
    static constexpr bool timed = Validation::uses_clock || Recycling::uses_clock;

    struct waiter {
        enum state_t : unsigned char { waiting, got_connection, got_permit, failed, closed };
        typename Concurrency::condition_type cv;
        state_t state = waiting;
        info* conn = nullptr;
        std::exception_ptr error;
        waiter* prev = nullptr;
        waiter* next = nullptr;
    };

    struct grant {
        enum kind_t : unsigned char { nothing, connection, permit } kind = nothing;
        info* conn = nullptr;
    };

    // Under the lock: an idle connection, a permit to open one, or a wait in
    // line. First come, first served: while anyone waits, a newcomer queues
    // too (waiters exist only when nothing is idle and no slot is free).
    template <bool MayWait, class GetDeadline>
    grant take(std::chrono::milliseconds timeout, const GetDeadline& get_deadline) {
        std::unique_lock lock(mutex_);
        if (closed_) throw closed_error("pqpool: the pool is closed");
        if (head_ == nullptr) {
            if (!idle_.empty()) {
                grant g{grant::connection, idle_.back()};
                idle_.pop_back();
                ++in_use_;
                return g;
            }
            if (may_open()) {
                ++opening_;
                return grant{grant::permit, nullptr};
            }
        }
        if constexpr (!MayWait) {
            return grant{};
        } else {
            if constexpr (!Concurrency::can_wait) {
                throw_exhausted(lock, "a single_thread pool never waits");
            } else {
                if (timeout.count() <= 0) throw_exhausted(lock, "the overflow policy does not wait");
                if (waiting_ >= overflow_.max_waiters()) throw_exhausted(lock, "the waiter queue is full");
                const time_point deadline = get_deadline();
                waiter w;
                enqueue(&w);
                ++waiting_;
                while (w.state == waiter::waiting) {
                    if (w.cv.wait_until(lock, deadline) == std::cv_status::timeout && w.state == waiter::waiting) {
                        unlink(&w);
                        const pool_stats s = snapshot();
                        --waiting_;
                        observer_.on_event(event::timeout);
                        leave(lock);
                        throw timeout_error("pqpool: acquire timed out after " + std::to_string(timeout.count()) +
                                                " ms: " + describe(s),
                                            s);
                    }
                }
                --waiting_;
                switch (w.state) {
                case waiter::got_connection: return grant{grant::connection, w.conn};
                case waiter::got_permit: return grant{grant::permit, nullptr};
                case waiter::failed: {
                    const std::exception_ptr error = w.error;
                    leave(lock);
                    std::rethrow_exception(error);
                }
                default: leave(lock); throw closed_error("pqpool: the pool was closed while waiting");
                }
            }
        }
    }

    [[noreturn]] void throw_exhausted(std::unique_lock<typename Concurrency::mutex_type>& lock, const char* why) {
        const pool_stats s = snapshot();
        lock.unlock();
        observer_.on_event(event::exhausted);
        throw exhausted_error(std::string("pqpool: no connection available without waiting (") + why +
                                  "): " + describe(s),
                              s);
    }

    // An idle connection the caller now holds (counted in in_use_): checked by
    // recycling and validation, or closed (false).
    bool hand_out(info* c) {
        const time_point now = timed ? coarse_now<clock>() : time_point{};
        if (recycling_.keep_on_acquire(*c, now)) [[likely]] {
            if (validation_.validate(connector_, *c, now)) [[likely]] {
                ++c->uses;
                return true;
            }
            discard(c, event::validation_failed);
        } else {
            discard(c, event::retired);
        }
        return false;
    }

    [[gnu::noinline]] void discard(info* c, event why) noexcept {
        observer_.on_event(why);
        close_held(c);
    }

    // Closes a connection counted in in_use_ (outside the lock), then frees its
    // slot for the first waiter.
    void close_held(info* c) noexcept {
        connector_.close(c->handle);
        delete c;
        std::unique_lock lock(mutex_);
        --in_use_;
        pass_permit();
        leave(lock);
    }

    // The caller holds a permit (counted in opening_): open a connection. Each
    // attempt is bounded by the connector's own connect timeout, not by the
    // acquire's wait: a wait shorter than a handshake must not make the pool
    // unable to connect. `retry_until` only decides whether another attempt
    // may start after a failure.
    lease_type open_reserved(time_point retry_until) {
        info* c;
        try {
            c = open(retry_until);
        } catch (const connect_error&) {
            std::unique_lock lock(mutex_);
            --opening_;
            // This attempt spent its whole retry budget, and no connection
            // could come back to the waiters: they would only try the same
            // server again, one budget each. They share this outcome instead.
            if (idle_.empty() && in_use_ == 0)
                fail_waiters(std::current_exception());
            else
                pass_permit();
            leave(lock);
            throw;
        } catch (...) {
            std::unique_lock lock(mutex_);
            --opening_;
            pass_permit();
            leave(lock);
            throw;
        }
        {
            std::unique_lock lock(mutex_);
            if (!closed_) {
                --opening_;
                ++in_use_;
                pass_permit(); // a connect slot freed: the next waiter may open one
                return lease_type(this, c);
            }
        }
        connector_.close(c->handle); // still counted in opening_, so the core stays alive meanwhile
        delete c;
        std::unique_lock lock(mutex_);
        --opening_;
        leave(lock);
        throw closed_error("pqpool: the pool was closed while connecting");
    }

    // A new connection's record lives on the heap until it is closed, so that
    // the idle stack, waiters and leases pass a pointer, never a copy.
    info* open(time_point retry_until) {
        for (unsigned failures = 0;;) {
            try {
                auto c = std::make_unique<info>();
                c->handle = connector_.connect(time_point::max());
                c->generation = fork_.generation();
                c->uses = 1;
                if constexpr (timed) c->born = c->last_used = coarse_now<clock>();
                recycling_.on_open(*c, c->born);
                observer_.on_event(event::connected);
                return c.release();
            } catch (const connect_error& e) {
                observer_.on_event(event::connect_failed);
                if (!e.transient()) throw;
                const auto delay = retry_.next_delay(++failures);
                if (!delay) throw;
                if (saturating_add(clock::now(), *delay) >= retry_until) throw;
                observer_.on_event(event::retry);
                sleep_for<clock>(*delay);
            }
        }
    }

    bool push_idle(info* c) noexcept {
        try {
            idle_.push_back(c);
            return true;
        } catch (...) { // out of memory: close it rather than lose it
            return false;
        }
    }

    // Room for one more connection, and for one more connect in flight?
    bool may_open() const noexcept {
        return size() < overflow_.max_size() && opening_ < retry_.max_connecting();
    }

    // A slot was freed: let the first waiter open a connection in it.
    void pass_permit() noexcept {
        if (closed_) return;
        if (waiter* w = head_; w && may_open()) {
            unlink(w);
            ++opening_;
            w->state = waiter::got_permit;
            w->cv.notify_one();
        }
    }

    void fail_waiters(std::exception_ptr error) noexcept {
        while (waiter* w = head_) {
            unlink(w);
            w->state = waiter::failed;
            w->error = error;
            w->cv.notify_one();
        }
    }

    // After a count went down: if the pool object is gone and nobody is left
    // inside, delete the core. Returns true when it did (the lock is then
    // released and nothing of *this may be touched).
    bool leave(std::unique_lock<typename Concurrency::mutex_type>& lock) noexcept {
        if (!orphaned_ || in_use_ + opening_ + waiting_ + inherited_ != 0) return false;
        lock.unlock();
        lock.release();
        delete this;
        return true;
    }

    void check_fork() noexcept {
        if constexpr (fork_detects) {
            if (fork_.generation() != generation_.load(std::memory_order_acquire)) [[unlikely]]
                adopt_after_fork();
        }
    }

    // The first thread of a child process to touch the pool takes it over. The
    // mutex may have been locked at fork() by a thread that does not exist
    // here, so it is rebuilt before anyone locks it; a thread that arrives
    // meanwhile waits until the takeover is done.
    void adopt_after_fork() noexcept {
        const std::uint64_t now_gen = fork_.generation();
        std::uint64_t claimed = adopting_.load(std::memory_order_acquire);
        if (claimed != now_gen && adopting_.compare_exchange_strong(claimed, now_gen)) {
            std::construct_at(&mutex_); // a fresh, unlocked mutex; the old one has no resources to free
            std::lock_guard lock(mutex_);
            after_fork(now_gen);
            return;
        }
        while (generation_.load(std::memory_order_acquire) != now_gen) std::this_thread::yield();
    }

    // In a child process: abandon (no I/O) every inherited idle connection and
    // start afresh. Leases taken before the fork are no longer counted; the
    // threads that waited or connected do not exist here.
    void after_fork(std::uint64_t now_gen) noexcept {
        for (info* c : idle_) {
            connector_.abandon(c->handle);
            delete c;
        }
        idle_.clear();
        inherited_ += in_use_;
        in_use_ = 0;
        opening_ = 0;
        waiting_ = 0;
        head_ = tail_ = nullptr;
        observer_.on_event(event::fork_detected);
        generation_.store(now_gen, std::memory_order_release);
    }

    void release_inherited(info* c) noexcept {
        connector_.abandon(c->handle);
        delete c;
        check_fork();
        std::unique_lock lock(mutex_);
        if (inherited_ > 0) --inherited_;
        leave(lock);
    }

    std::size_t size() const noexcept { return idle_.size() + in_use_ + opening_; }

    pool_stats snapshot() const noexcept {
        pool_stats s;
        s.idle = idle_.size();
        s.in_use = in_use_;
        s.opening = opening_;
        s.size = s.idle + s.in_use + s.opening;
        s.overflow = s.size > overflow_.keep_idle() ? s.size - overflow_.keep_idle() : 0;
        s.waiting = waiting_;
        return s;
    }

    void enqueue(waiter* w) noexcept {
        w->prev = tail_;
        w->next = nullptr;
        (tail_ ? tail_->next : head_) = w;
        tail_ = w;
    }

    void unlink(waiter* w) noexcept {
        (w->prev ? w->prev->next : head_) = w->next;
        (w->next ? w->next->prev : tail_) = w->prev;
        w->prev = w->next = nullptr;
    }

    Connector connector_;
    [[no_unique_address]] Validation validation_;
    [[no_unique_address]] Recycling recycling_;
    [[no_unique_address]] Overflow overflow_;
    [[no_unique_address]] Retry retry_;
    [[no_unique_address]] ForkSafety fork_;
    [[no_unique_address]] Observability observer_;
    mutable typename Concurrency::mutex_type mutex_;
    std::vector<info*> idle_; // a stack: the most recently returned connection is reused first
    std::size_t in_use_ = 0;
    std::size_t opening_ = 0;
    std::size_t waiting_ = 0;
    std::size_t inherited_ = 0; // leases taken before a fork, still out in this (child) process
    waiter* head_ = nullptr;
    waiter* tail_ = nullptr;
    std::atomic<std::uint64_t> generation_;
    std::atomic<std::uint64_t> adopting_; // the generation whose takeover has been claimed
    bool closed_ = false;
    bool orphaned_ = false;
};

} // namespace pqpool::detail
