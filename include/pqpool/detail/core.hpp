#pragma once

// The pool's state and algorithms. basic_pool is a handle to one heap-allocated
// pool_core so that leases may outlive the pool: the core deletes itself when
// the pool is gone and nobody is left inside it.
//
// Who keeps the core alive, counted under its lock (leave() deletes it when all
// are zero and the pool object is gone):
// - in_use_: connections held by leases (or by a caller validating them);
// - opening_: connect chains, driven by a caller or parked between callers;
// - pins_: threads inside a slow operation (acquire's slow path, try_acquire,
//   run, maintain). A thread takes its pin in the same locked section as its
//   first look at the pool and drops it last, so no path can drop the last
//   count and then touch *this: only the outermost step of a call may leave().
// - inherited_: leases taken before a fork, still out in a child.
//
// A connect in progress lives in a `chain`: the connector's resumable attempt
// plus its retry state. A caller whose wait ends mid-connect parks the chain
// for the next caller (or hands it to the first waiter) instead of throwing the
// handshake away, so callers with short waits still warm a cold pool up, and
// no caller ever waits past its deadline for a connect.

#include <pqpool/connection_info.hpp>
#include <pqpool/deadline.hpp>
#include <pqpool/detail/clock.hpp>
#include <pqpool/detail/pointer_stack.hpp>
#include <pqpool/detail/wait.hpp>
#include <pqpool/error.hpp>
#include <pqpool/lease.hpp>
#include <pqpool/policies/observability.hpp>
#include <pqpool/stats.hpp>

#include <algorithm>
#include <array>
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
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace pqpool::detail {

// A manual clock in unit tests advances instead of sleeping.
template <class Clock>
inline constexpr bool sleeps_itself = requires {
    Clock::sleep_for(std::chrono::nanoseconds{});
};

template <class Clock, class Duration>
void sleep_for(Duration d) {
    if constexpr (sleeps_itself<Clock>)
        Clock::sleep_for(d);
    else
        std::this_thread::sleep_for(d);
}

// What the pool keeps with a connection beyond connection_info, only for an
// observability policy that needs it; otherwise distinct empty bases that take
// no space, so a pool with observability::none has the records it had.
template <int>
struct no_fields {};
struct broken_mark { // why a returned connection was closed: its lease was marked broken
    bool marked_broken = false;
};
template <class TimePoint>
struct lease_stamp { // when the current lease began
    TimePoint out_since{};
};
template <class Record>
struct lease_link { // a lease out, in the pool's list of them (leak detection)
    pqpool::source_location where{};
    Record* out_prev = nullptr;
    Record* out_next = nullptr;
    bool reported = false;
};
template <class Base, class TimePoint, bool Mark, bool Stamp, bool Link>
struct pool_record
    : Base,
      std::conditional_t<Mark, broken_mark, no_fields<0>>,
      std::conditional_t<Stamp, lease_stamp<TimePoint>, no_fields<1>>,
      std::conditional_t<Link, lease_link<pool_record<Base, TimePoint, Mark, Stamp, Link>>, no_fields<2>> {};

// The caller's location when leak detection is off: an empty type whose
// current() is free, so the defaulted argument of acquire() costs nothing.
struct no_location {
    static constexpr no_location current() noexcept { return {}; }
};

inline std::string describe(const pool_stats& s) {
    return "size " + std::to_string(s.size) + " (" + std::to_string(s.in_use) + " in use, " + std::to_string(s.idle) +
           " idle, " + std::to_string(s.opening) + " opening), " + std::to_string(s.waiting) + " waiting";
}

template <class Connector, class Validation, class Recycling, class Overflow, class Retry, class ForkSafety,
          class Concurrency, class Observability>
class pool_core {
public:
    using clock = typename Connector::clock;
    using time_point = typename clock::time_point;
    using handle = typename Connector::handle;
    using lease_type = pqpool::lease<pool_core>;
    using deadline_type = pqpool::deadline<clock>;
    static constexpr bool fork_detects = ForkSafety::detects;

    // What the observability policy asks for (see observability_policy).
    using observer_traits = detail::observer_traits<Observability>;
    static constexpr bool obs_silent = observer_traits::silent;
    static constexpr bool lease_events = observer_traits::lease_events;
    static constexpr bool times_leases = observer_traits::times_leases;
    static constexpr bool times_connects = observer_traits::times_connects;
    static constexpr bool tracks_leaks = observer_traits::tracks_leaks;
    static constexpr bool watches_leases = lease_events || tracks_leaks;
    using location_type = std::conditional_t<tracks_leaks, pqpool::source_location, no_location>;
    using event_type = pqpool::event_info<handle>;

    using info = pool_record<connection_info<handle, time_point>, time_point, !obs_silent, times_leases || tracks_leaks,
                             tracks_leaks>;

    pool_core(Connector c, Validation v, Recycling r, Overflow o, Retry rt, ForkSafety f, Concurrency cc,
              Observability ob)
        : connector_(std::move(c)),
          validation_(std::move(v)),
          recycling_(std::move(r)),
          overflow_(std::move(o)),
          retry_(std::move(rt)),
          fork_(std::move(f)),
          observer_(std::move(ob)),
          concurrency_(std::move(cc)),
          generation_(fork_.generation()),
          adopting_(generation_.load()) {
        if (!idle_.reserve(std::min<std::size_t>(overflow_.keep_idle(), 1024))) throw std::bad_alloc();
        set_idle_limit();
        if constexpr (binds_epoch) connector_.bind_epoch(&epoch_);
    }

    // Connections opened through a copy of the connector (by hand, from
    // pool.connector()) may outlive the core: they stop reporting here.
    ~pool_core() {
        if constexpr (binds_epoch) connector_.bind_epoch(nullptr);
    }

    // Every connection opened before now is retired instead of handed out
    // (at its next acquire or release, or by maintain()).
    void invalidate() noexcept { epoch_.fetch_add(1, std::memory_order_relaxed); }

    // A connection born in epoch `born` saw its server go away: the epoch
    // moves on, unless it already has since that birth (another connection
    // reported the same event first; connections opened since are current).
    void invalidate_since(std::uint64_t born) noexcept {
        epoch_.compare_exchange_strong(born, born + 1, std::memory_order_relaxed);
    }

    const Overflow& overflow() const noexcept { return overflow_; }
    const Recycling& recycling() const noexcept { return recycling_; }
    const Observability& observer() const noexcept { return observer_; }
    const Connector& connector() const noexcept { return connector_; }

    // acquire(), and what the observability policy wants to know of the lease:
    // its wait, its start, where it was acquired. For a policy that watches no
    // lease this is acquire() itself.
    //
    // With leak detection, the look for overdue leases comes after the fork
    // check (in a child, the leak list's lock may have been held at fork() by
    // a thread that does not exist there: adopting the pool rebuilds it), and
    // a look that reports does so under a pin held through the acquire (the
    // observer may take long, and the pool may be destroyed meanwhile).
    lease_type acquire_at(std::chrono::milliseconds timeout, [[maybe_unused]] const location_type& where) {
        if constexpr (!watches_leases) {
            return acquire(timeout);
        } else {
            check_fork();
            const time_point start = lease_clock();
            lease_type l = [&] {
                if constexpr (tracks_leaks) {
                    if (leak_look_due(start)) [[unlikely]]
                        return acquire_after_leak_look(timeout, start);
                }
                return acquire_here(timeout);
            }();
            lease_out(*l.info_, start, where); // the lease keeps the core alive
            return l;
        }
    }

    // acquire_here() when a look for leaks is due: out of line, so that the
    // plain path stays as small as it was. The pin is dropped once the lease
    // counts (or, on a throw, as the last step).
    template <class = void>
    [[gnu::noinline]] lease_type acquire_after_leak_look(std::chrono::milliseconds timeout, time_point start) {
        pin_guard pin(*this, pin_guard::take);
        report_some_leaks(start);
        return acquire_here(timeout);
    }

    std::optional<lease_type> try_acquire_at([[maybe_unused]] const location_type& where) {
        if constexpr (!watches_leases) {
            return try_acquire();
        } else {
            check_fork();
            const time_point start = lease_clock();
            pin_guard pin(*this, pin_guard::take);
            if constexpr (tracks_leaks) {
                if (leak_look_due(start)) report_some_leaks(start);
            }
            std::optional<lease_type> l = try_acquire_pinned();
            if (l) lease_out(*l->info_, start, where);
            return l;
        }
    }

    lease_type acquire(std::chrono::milliseconds timeout) {
        check_fork();
        return acquire_here(timeout);
    }

    // acquire() once the fork check is done.
    lease_type acquire_here(std::chrono::milliseconds timeout) {
        // The fast path: an idle connection, nobody waiting (or, barging, nobody
        // waiting past its patience). One lock, a pop. (A closed pool has no
        // idle connection.)
        mutex_.lock();
        if (!idle_.empty() && may_overtake()) [[likely]] {
            info* c = idle_.pop();
            ++in_use_;
            mutex_.unlock();
            deadline_type until{timeout};
            if (hand_out(c, until, false)) [[likely]]
                return lease_type(this, c);
            return acquire_slow(until, true); // hand_out left this thread pinned, and first in line
        }
        ++pins_; // in the same locked section as the look: the pool may be destroyed from now on
        mutex_.unlock();
        deadline_type until{timeout};
        return acquire_slow(until, false);
    }

    // Everything but the fast path: waiting, connecting, replacing a
    // connection that failed validation. Kept out of line so that the fast
    // path stays small enough to inline into the caller. The caller holds a
    // pin, which this adopts.
    [[gnu::noinline]] lease_type acquire_slow(deadline_type& until, bool first) {
        pin_guard pin(*this, pin_guard::adopt);
        (void)until.get(); // fixed now: closing what failed validation counts against the wait too
        bool may_connect = true;
        for (;;) {
            grant g = take<true>(until, first, may_connect);
            first = true; // served once: from now on this caller goes first
            if (g.kind == grant::connection) {
                if (g.fresh) {
                    ++g.conn->uses;
                    return lease_type(this, g.conn);
                }
                if (hand_out(g.conn, until, true)) return lease_type(this, g.conn);
                continue;
            }
            drive_result r = drive(g.ch, until, backoff::wait_in_line);
            switch (r.kind) {
            case drive_result::fresh: return settle_as_lease(r.conn);
            case drive_result::handed:
                if (hand_out(r.conn, until, true)) return lease_type(this, r.conn);
                continue;
            case drive_result::parked: {
                std::unique_lock lock(mutex_);
                if (closed_) throw closed_error("pqpool: the pool was closed while connecting");
                throw_timeout(lock, until.wait(), nullptr, r.connecting_for);
            }
            case drive_result::failed:
                // This caller's connects spent their budget. If no connection
                // could come back, that error is everybody's; otherwise it
                // waits for a returned connection until its wait ends.
                if (r.rethrow || until.wait().count() <= 0 || !Concurrency::can_wait) std::rethrow_exception(r.error);
                may_connect = false;
                continue;
            }
        }
    }

    std::optional<lease_type> try_acquire() {
        check_fork();
        pin_guard pin(*this, pin_guard::take);
        return try_acquire_pinned();
    }

    // try_acquire() once the fork check is done, for a caller that holds a pin.
    std::optional<lease_type> try_acquire_pinned() {
        deadline_type never = deadline_type::never();
        bool first = false;
        for (;;) {
            grant g = take<false>(never, first, true);
            if (g.kind == grant::nothing) return std::nullopt;
            first = true;
            if (g.kind == grant::connection) {
                if (hand_out(g.conn, never, true)) return lease_type(this, g.conn);
                continue;
            }
            drive_result r = drive(g.ch, never, backoff::sleep);
            if (r.kind == drive_result::fresh) return settle_as_lease(r.conn);
            if (r.kind == drive_result::failed) std::rethrow_exception(r.error);
            return std::nullopt; // parked: cannot happen without a deadline
        }
    }

    // Runs work(handle) on a lease; when the connection is lost during it,
    // again on a fresh one, with the retry policy's budget and backoff. After
    // such a loss, getting the fresh connection is retried too when it fails
    // for a passing reason (a transient connect failure, or a wait that ended
    // while connects were failing: a restart, a dead path). A first acquire
    // that fails is the caller's answer, as from acquire(): a server that is
    // down gets one budget of connects per pool, not one per run().
    template <class F>
    std::invoke_result_t<F&, handle> run(F& work, const location_type& where) {
        using result = std::invoke_result_t<F&, handle>;
        check_fork();
        pin_guard pin(*this, pin_guard::take); // the lease may be the last count; this call goes on after it
        for (unsigned failures = 0;;) {
            std::optional<lease_type> got;
            try {
                got.emplace(acquire_at(overflow_.timeout(), where));
            } catch (const timeout_error& e) {
                // Only when connects were failing: a pool that is merely busy
                // is not helped by waiting again.
                if (failures == 0 || !e.last_connect_error() || !backoff_before_retry(++failures)) throw;
                continue;
            } catch (const connect_error& e) {
                if (failures == 0 || !e.transient() || !backoff_before_retry(++failures)) throw;
                continue;
            }
            lease_type& l = *got;
            const handle h = l.get();
            const auto retry_after_loss = [&]() -> bool {
                if (!connector_.broken(h)) return false;
                invalidate_since(l.info().epoch); // a lost connection: its server (or the path to it) went away
                l.mark_broken();
                l.release();
                return backoff_before_retry(++failures);
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

    // run(): sleeps the retry policy's delay after the n-th failure, or says
    // the budget is spent.
    bool backoff_before_retry(unsigned failures) {
        const auto delay = retry_.next_delay(failures);
        if (!delay) return false;
        notify(event::retry, [&](event_type& e) { e.backoff = *delay; });
        sleep_for<clock>(*delay);
        return true;
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
        if constexpr (!obs_silent) {
            // Set once, just before the connection is closed (a broken one never
            // comes back): nothing to clear on the plain path.
            if (broken) [[unlikely]]
                c->marked_broken = true;
        }
        if constexpr (watches_leases) lease_back(*c);
        const time_point now = timed ? coarse_now<clock>() : time_point{};
        const bool keep = !broken && current_epoch(*c) && recycling_.keep_on_release(connector_, *c, now);
        if constexpr (timed) c->last_used = now;
        // The fast path: back on the idle stack, nobody waiting, nothing to trim.
        // (idle_limit_ is 0 once the pool is closed.)
        mutex_.lock();
        if (keep && head_ == nullptr && idle_.size() < idle_limit_) [[likely]] {
            if constexpr (Recycling::uses_clock) {
                if (!idle_.empty() && !recycling_.keep_idle(*idle_.front(), now, idle_.size() + 1)) [[unlikely]] {
                    release_slow(c, keep, now);
                    return;
                }
            }
            idle_.push(c);
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
                if constexpr (!Concurrency::fifo) {
                    // Barging: back on the stack for whoever comes first, the
                    // first waiter nudged to come and look, unless it has
                    // waited past its patience.
                    if (!w->starving && idle_.size() < overflow_.keep_idle() && push_idle(c)) {
                        --in_use_;
                        nudge();
                        mutex_.unlock();
                        return;
                    }
                }
                serve(w, waiter::got_connection, c); // the connection passes on; in_use_ is unchanged
                mutex_.unlock();
                return;
            }
            if (idle_.size() < overflow_.keep_idle() && push_idle(c)) {
                --in_use_;
                if constexpr (Recycling::uses_clock) {
                    // Lazy idle trimming: one look at the connection idle the longest.
                    if (!recycling_.keep_idle(*idle_.front(), now, idle_.size())) {
                        info* oldest = idle_.front();
                        idle_.erase(0);
                        ++in_use_; // counted until closed
                        mutex_.unlock();
                        notify_closed(event::retired, *oldest, retire_reason(*oldest, now));
                        close_held(oldest);
                        return;
                    }
                }
                mutex_.unlock();
                return;
            }
        }
        [[maybe_unused]] const bool pool_closed = closed_;
        mutex_.unlock();
        if constexpr (!obs_silent) {
            if (pool_closed)
                notify_closed(event::retired, *c, close_reason::pool_closed);
            else if (keep)
                notify_closed(event::trimmed, *c, close_reason::surplus);
            else
                notify_closed(event::retired, *c, returned_reason(*c, now));
        }
        close_held(c);
    }

    // Trims idle connections (idle too long above the policy's floor, or
    // expired), then opens connections up to the floor and leaves them idle.
    // Bounded: at most `idle_floor()` connect attempts per call, none of them
    // waiting out a retry backoff (a chain in backoff is parked for later).
    maintenance_report maintain() {
        check_fork();
        pin_guard pin(*this, pin_guard::take);
        if constexpr (tracks_leaks) report_all_leaks(lease_clock());
        maintenance_report report;
        {
            std::vector<info*> stale;
            const time_point now = coarse_now<clock>();
            {
                std::lock_guard lock(mutex_);
                stale.reserve(idle_.size()); // may throw, before anything changed; nothing below can
                for (std::size_t i = 0; i < idle_.size();) {
                    if (current_epoch(*idle_[i]) && recycling_.keep_idle(*idle_[i], now, idle_.size())) {
                        ++i;
                        continue;
                    }
                    stale.push_back(idle_[i]);
                    idle_.erase(i);
                    ++in_use_; // counted until closed
                }
            }
            for (info* c : stale) {
                notify_closed(event::retired, *c, retire_reason(*c, now));
                close_counted(c);
            }
            report.closed = stale.size();
        }
        deadline_type never = deadline_type::never();
        const std::size_t floor = recycling_.idle_floor();
        std::size_t budget;
        {
            std::lock_guard lock(mutex_);
            budget = floor + parked_count_; // bounded work: a chain parked by a caller, or one per missing connection
        }
        for (std::size_t i = 0; i < budget; ++i) {
            chain* ch = nullptr;
            {
                std::lock_guard lock(mutex_);
                if (closed_ || head_ != nullptr) break;
                if (!(ch = pop_parked())) {
                    if (size() >= floor || !may_open()) break;
                    ++opening_;
                }
            }
            drive_result r = drive(ch, never, backoff::give_up);
            if (r.kind == drive_result::fresh) {
                settle_as_idle(r.conn);
                ++report.opened;
            } else if (r.kind == drive_result::failed) {
                std::rethrow_exception(r.error);
            } else {
                break; // parked in a backoff: a later call goes on with it
            }
        }
        return report;
    }

    void close() noexcept {
        check_fork();
        pin_guard pin(*this, pin_guard::take); // safe even if the pool object goes meanwhile
        close_now();
    }

    // The pool object is gone; the core lives on while anyone is inside it.
    void shutdown() noexcept {
        check_fork();
        close_now(); // not orphaned yet: nothing can delete the core meanwhile
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
    void close_now() noexcept {
        pointer_stack<info> idle;
        chain* parked = nullptr;
        {
            std::lock_guard lock(mutex_);
            if (closed_) return;
            closed_ = true;
            idle = std::move(idle_);
            set_idle_limit();
            parked = std::exchange(parked_, nullptr);
            opening_ -= parked_count_;
            parked_count_ = 0;
            // Each waiter leaves on its own after it wakes (it holds a pin).
            while (waiter* w = head_) serve(w, waiter::closed);
        }
        for (info* c : idle) {
            notify_closed(event::retired, *c, close_reason::pool_closed);
            connector_.close(c->handle);
            delete c;
        }
        while (chain* ch = parked) {
            parked = ch->next;
            connector_.cancel_connect(ch->attempt);
            delete ch;
        }
    }

    static constexpr bool timed = Validation::uses_clock || Recycling::uses_clock;
    // A connector that watches its connections (a FATAL 57P01, a lost
    // connection; on a read-write pool, a server that confirms it turned
    // read-only) moves the epoch itself, from any thread.
    static constexpr bool binds_epoch = requires(Connector & c, std::atomic<std::uint64_t>* e) { c.bind_epoch(e); };

    // --- Observability. Every helper is empty for a silent policy (none):
    // no event is built, no clock read, no field written.

    template <class Fill>
    void notify(event kind, Fill&& fill) noexcept {
        if constexpr (!obs_silent) {
            event_type e;
            e.kind = kind;
            fill(e);
            observer_.on_event(e);
        } else {
            (void)kind, (void)fill;
        }
    }
    void notify(event kind) noexcept {
        notify(kind, [](event_type&) {});
    }

    // A connection is closed (it is still the caller's alone).
    void notify_closed(event kind, [[maybe_unused]] const info& c, [[maybe_unused]] close_reason why) noexcept {
        notify(kind, [&](event_type& e) {
            e.connection = c.id;
            e.uses = c.uses;
            e.reason = why;
            if constexpr (times_connects) e.age = coarse_now<clock>() - c.born;
        });
    }

    static void describe_failure(event_type& e, const connect_error& failure) noexcept {
        e.error = failure.what();
        e.sqlstate = failure.sqlstate();
        e.transient = failure.transient();
    }

    // Why recycling (or an invalidation) retired an idle connection.
    close_reason retire_reason(const info& c, [[maybe_unused]] time_point now) const noexcept {
        if (!current_epoch(c)) return close_reason::epoch;
        if constexpr (requires { recycling_.reason(c, now); })
            return recycling_.reason(c, now);
        else
            return close_reason::recycled;
    }

    // Why a returned connection was closed instead of kept. (A template, as
    // look_for_leaks is: an explicit instantiation of a pool whose records
    // lack the fields they read, as src.hpp makes of pool<>, leaves them out.)
    template <class Info = info>
    close_reason returned_reason(const Info& c, time_point now) const noexcept {
        if (c.marked_broken) return close_reason::broken;
        if (!current_epoch(c) || !recycling_.keep_on_acquire(c, now)) return retire_reason(c, now);
        return close_reason::reset_failed; // kept by the limits, refused by the reset
    }

    // The clock of lease times: the precise one for wait and hold times, the
    // coarse one when only leaks are looked for.
    static time_point lease_clock() noexcept {
        if constexpr (times_leases)
            return clock::now();
        else
            return coarse_now<clock>();
    }

    // A lease was handed out (`start`: when its acquire began).
    void lease_out(info& c, time_point start, [[maybe_unused]] const location_type& where) noexcept {
        const time_point now = times_leases ? clock::now() : start;
        if constexpr (times_leases || tracks_leaks) c.out_since = now;
        if constexpr (tracks_leaks) {
            c.where = where;
            c.reported = false;
            std::lock_guard lock(leaks_.mutex);
            c.out_prev = nullptr;
            c.out_next = leaks_.head;
            if (leaks_.head) leaks_.head->out_prev = &c;
            leaks_.head = &c;
        }
        if constexpr (lease_events) {
            notify(event::acquired, [&](event_type& e) {
                e.connection = c.id;
                e.uses = c.uses;
                if constexpr (times_leases) {
                    e.wait = now - start;
                    e.age = now - c.born;
                }
                if constexpr (tracks_leaks) e.where = &c.where;
            });
        }
    }

    // A lease comes back (before the pool takes its connection back).
    void lease_back(info& c) noexcept {
        const time_point now = lease_clock();
        [[maybe_unused]] bool was_reported = false;
        if constexpr (tracks_leaks) {
            std::lock_guard lock(leaks_.mutex);
            (c.out_prev ? c.out_prev->out_next : leaks_.head) = c.out_next;
            if (c.out_next) c.out_next->out_prev = c.out_prev;
            c.out_prev = c.out_next = nullptr;
            was_reported = c.reported;
        }
        if constexpr (lease_events) {
            notify(event::returned, [&](event_type& e) {
                e.connection = c.id;
                e.uses = c.uses;
                if constexpr (times_leases) {
                    e.hold = now - c.out_since;
                    e.age = now - c.born;
                }
                if constexpr (tracks_leaks) e.where = &c.where;
            });
        }
        if constexpr (tracks_leaks) {
            if (was_reported) {
                notify(event::leak_returned, [&](event_type& e) {
                    e.connection = c.id;
                    e.uses = c.uses;
                    e.hold = now - c.out_since;
                    e.where = &c.where;
                });
            }
            look_for_leaks(now);
        }
    }

    // On the pool's own calls: at most once per threshold / 8 (one relaxed
    // load otherwise), report the leases out longer than the threshold.
    template <class = void>
    void look_for_leaks(time_point now) noexcept {
        if (leak_look_due(now)) report_some_leaks(now);
    }

    // Is a look due at `now`? Claims it: the next one is due threshold / 8
    // later. In clock ticks, saturated: a huge threshold (milliseconds::max(),
    // no limit) puts the next look at the end of time, never past it.
    template <class = void>
    bool leak_look_due(time_point now) noexcept {
        const auto due = leaks_.next_look.load(std::memory_order_relaxed);
        if (now.time_since_epoch().count() < due) [[likely]]
            return false;
        return claim_leak_look(now, due);
    }
    template <class = void>
    [[gnu::noinline]] bool claim_leak_look(time_point now, typename clock::duration::rep due) noexcept {
        using duration = typename clock::duration;
        const std::chrono::milliseconds threshold = observer_.leak_threshold();
        const duration ticks = shorter_than(threshold, duration::max())
                                   ? std::chrono::duration_cast<duration>(threshold)
                                   : duration::max();
        const duration interval = std::max(ticks / 8, duration{1});
        const auto next = saturating_add(now, interval).time_since_epoch().count();
        return leaks_.next_look.compare_exchange_strong(due, next, std::memory_order_relaxed);
    }

    // A lease out longer than the threshold, as reported (copied under the
    // list's lock; the events go out after it is released).
    struct overdue {
        std::uint64_t id = 0, uses = 0;
        pqpool::source_location where{};
        std::chrono::nanoseconds out{};
    };

    // Under the list's lock: the leases out longer than the threshold at
    // `now` and not reported yet; up to `room` of them are marked reported
    // and copied to `out` (when `out` is null, none: they are only counted).
    // Returns how many there are, copied or not.
    template <class = void>
    std::size_t collect_overdue(time_point now, overdue* out, std::size_t room) noexcept {
        const auto threshold = observer_.leak_threshold();
        std::size_t n = 0;
        std::lock_guard lock(leaks_.mutex);
        for (info* r = leaks_.head; r; r = r->out_next) {
            if (r->reported || shorter_than(now - r->out_since, threshold)) continue;
            if (out && n < room) {
                r->reported = true;
                out[n] = {r->id, r->uses, r->where, now - r->out_since};
            }
            ++n;
        }
        return n;
    }

    template <class = void>
    void notify_overdue(const overdue* batch, std::size_t n) noexcept {
        for (std::size_t i = 0; i < n; ++i) {
            notify(event::leak_suspected, [&](event_type& e) {
                e.connection = batch[i].id;
                e.uses = batch[i].uses;
                e.hold = batch[i].out;
                e.where = &batch[i].where;
            });
        }
    }

    // A look on the pool's own calls (an acquire, a return) reports at most
    // 16 leases, so that the call's extra work stays bounded; when more are
    // overdue, the next call looks again at once.
    static constexpr std::size_t leak_batch = 16;
    template <class = void>
    void report_some_leaks(time_point now) noexcept {
        std::array<overdue, leak_batch> batch;
        const std::size_t found = collect_overdue(now, batch.data(), batch.size());
        if (found > batch.size()) leaks_.next_look.store(0, std::memory_order_relaxed);
        notify_overdue(batch.data(), std::min(found, batch.size()));
    }

    // maintain(): every lease overdue at `now`. Throws std::bad_alloc (before
    // any of them is marked reported).
    template <class = void>
    void report_all_leaks(time_point now) {
        std::vector<overdue> batch;
        for (;;) {
            const std::size_t due = collect_overdue(now, nullptr, 0);
            if (due == 0) return;
            batch.resize(due);
            const std::size_t found = collect_overdue(now, batch.data(), batch.size());
            notify_overdue(batch.data(), std::min(found, batch.size()));
            if (found <= batch.size()) return; // more went overdue meanwhile: another round
        }
    }

    // The leases out, for leak detection (its own lock: the pool's is not
    // taken again on the plain path).
    struct leak_list {
        typename Concurrency::mutex_type mutex;
        info* head = nullptr;
        std::atomic<typename clock::duration::rep> next_look{0}; // clock ticks
    };

    // A connect in progress and its retry state; counted in opening_ from the
    // grant of its permit until it ends.
    struct chain {
        typename Connector::attempt attempt{};
        std::unique_ptr<info> record = std::make_unique<info>(); // the connection's, once open
        unsigned failures = 0;                                   // consecutive failed attempts
        time_point since = clock::now();                         // the current attempt's start
        time_point not_before{};                                 // the next attempt waits until then (backoff)
        chain* next = nullptr;                                   // in parked_
    };

    struct waiter {
        // nudged (barging only): a connection went idle; come and look, still in line.
        enum state_t : unsigned char { waiting, got_connection, got_chain, failed, closed, nudged };
        handoff<state_t, waiting> slot; // the outcome, published under the lock
        bool starving = false;          // barging: waited past its patience; no longer overtaken
        bool accepts_chain = true;      // false: its own connects failed; it waits for a returned connection
        bool holds_chain = false;       // waits out the backoff of a chain it drives
        bool first = false;             // served once before: queued ahead of callers that never were
        bool fresh = false;             // with got_connection: just opened, needs no validation
        info* conn = nullptr;
        chain* ch = nullptr;                        // with got_chain; null for a fresh permit
        std::shared_ptr<const connect_error> error; // with failed: each waiter throws its own copy
        waiter* prev = nullptr;
        waiter* next = nullptr;
    };

    struct grant {
        enum kind_t : unsigned char { nothing, connection, permit } kind = nothing;
        info* conn = nullptr;
        bool fresh = false;  // with connection: just opened, needs no validation
        chain* ch = nullptr; // with permit: a parked chain to go on with, or null for a new one
    };

    struct drive_result {
        enum kind_t : unsigned char {
            fresh,  // a new connection (still counted in opening_: settle it)
            handed, // a returned connection reached the caller while it waited out a backoff
            parked, // the caller's deadline came first; the chain waits for the next caller
            failed, // the chain ended with `error`
        } kind;
        info* conn = nullptr;
        std::exception_ptr error{};
        // With failed: rethrow at once, because no connection in use or idle
        // could come back to the caller, or because the error is not a
        // connect failure (a bug, out of memory) and waiting would hide it.
        bool rethrow = false;
        // With parked: how long the chain has been connecting (a server that
        // never answers shows here, not as a failure).
        std::chrono::milliseconds connecting_for{0};
    };

    enum class backoff { wait_in_line, sleep, give_up };

    // A thread inside a slow operation: the core stays alive until it leaves.
    // On the way out it also passes on a slot it may have kept for itself.
    struct pin_guard {
        enum mode_t { adopt, take };
        pool_core& core;
        pin_guard(pool_core& c, mode_t mode) : core(c) {
            if (mode == take) {
                std::lock_guard lock(core.mutex_);
                ++core.pins_;
            }
        }
        pin_guard(const pin_guard&) = delete;
        pin_guard& operator=(const pin_guard&) = delete;
        ~pin_guard() {
            std::unique_lock lock(core.mutex_);
            --core.pins_;
            core.pass_permit();
            core.leave(lock);
        }
    };

    // Under the lock: an idle connection, a chain (parked, or a fresh permit),
    // or a wait in line. First come, first served: while anyone waits, a
    // newcomer queues too; a caller served once before (`first`) goes ahead.
    // Without `may_connect` the caller waits only for a returned connection.
    template <bool MayWait>
    grant take(deadline_type& until, bool first, bool may_connect) {
        std::unique_lock lock(mutex_);
        if (closed_) throw closed_error("pqpool: the pool is closed");
        if (!idle_.empty() && (first || may_overtake())) {
            grant g{grant::connection, idle_.pop()};
            ++in_use_;
            return g;
        }
        if (head_ == nullptr || first) {
            if (may_connect) {
                if (chain* ch = pop_parked()) return grant{grant::permit, nullptr, false, ch};
                if (may_open()) {
                    ++opening_;
                    return grant{grant::permit};
                }
            }
        }
        if constexpr (!MayWait) {
            return grant{};
        } else {
            if constexpr (!Concurrency::can_wait) {
                throw_exhausted(lock, "a single_thread pool never waits");
            } else {
                if (until.wait().count() <= 0)
                    throw_exhausted(lock, until.wait() == overflow_.timeout() ? "the overflow policy does not wait"
                                                                              : "acquire_for(0) does not wait");
                if (!first && waiting_ >= overflow_.max_waiters()) throw_exhausted(lock, "the waiter queue is full");
                waiter w;
                w.accepts_chain = may_connect;
                w.first = first;
                wait_in_line(lock, w, until.get());
                switch (w.slot.state()) {
                case waiter::waiting: throw_timeout(lock, until.wait(), &w);
                case waiter::got_connection: return grant{grant::connection, w.conn, w.fresh};
                case waiter::got_chain: return grant{grant::permit, nullptr, false, w.ch};
                case waiter::failed: throw connect_error(*w.error);
                case waiter::closed:
                case waiter::nudged: break;
                }
                throw closed_error("pqpool: the pool was closed while waiting");
            }
        }
    }

    // Queues `w` (at the front for a caller served before) and waits until it
    // is served or `until` passes. Served: returns with the lock released and
    // the outcome in `w`. Not served by `until`: returns with the lock held
    // and `w` still `waiting` and still in line (the caller takes it out with
    // dequeue()).
    void wait_in_line(std::unique_lock<typename Concurrency::mutex_type>& lock, waiter& w, time_point until) {
        if constexpr (Concurrency::can_wait) {
            const std::chrono::nanoseconds spin = spin_for(w);
            enqueue(&w);
            ++waiting_;
            pass_permit(); // a parked chain or a free slot may be waiting for exactly this waiter
            if constexpr (Concurrency::fifo) {
                w.slot.wait(lock, spin, until, spin_gauge_);
            } else {
                // Barging: overtaken until its patience runs out; then the next
                // connection returned is handed to it.
                const time_point patient = std::min(until, saturating_add(clock::now(), concurrency_.max_patience()));
                for (bool nudged_before = false;; nudged_before = true) {
                    // After a nudge it lost, a waiter sleeps: spinning again would
                    // take the CPU from the holders it waits for.
                    const auto seen = w.slot.wait(lock, nudged_before ? std::chrono::nanoseconds{} : spin,
                                                  w.starving ? until : patient, spin_gauge_);
                    if (!lock.owns_lock()) {
                        if (seen != waiter::nudged) return; // served
                        lock.lock();
                        if (w.slot.state() != waiter::nudged) { // served since
                            lock.unlock();
                            return;
                        }
                        w.slot.set(waiter::waiting);
                        nudged_ = nullptr;
                    } else if (!w.starving && clock::now() < until) {
                        w.starving = true;
                    } else {
                        return; // its wait is over
                    }
                    if (!idle_.empty()) {
                        dequeue(&w);
                        w.conn = idle_.pop();
                        ++in_use_;
                        w.slot.set(waiter::got_connection);
                        if (!idle_.empty()) nudge(); // more went idle meanwhile: the next waiter's
                        lock.unlock();
                        return;
                    }
                }
            }
        } else {
            (void)lock, (void)w, (void)until;
        }
    }

    // Under the lock, before `w` queues: how long it may spin for a hand-over.
    // Only a caller that the connections in use could reach soon spins (the
    // one at the front of the line when one connection is in use), and no
    // more at once than half the CPUs, since a spinner takes a CPU from the
    // holders it waits for; and not one waiting out its own connect's backoff
    // (milliseconds).
    std::chrono::nanoseconds spin_for(const waiter& w) const noexcept {
        static const std::size_t half_the_cpus = std::max(1u, usable_cpus() / 2);
        const std::size_t ahead = w.first ? 0 : waiting_;
        if (w.holds_chain || ahead >= std::min(in_use_, half_the_cpus)) return {};
        return spin_gauge_.budget(concurrency_.max_spin());
    }

    // Barging, under the lock: a connection is idle while callers wait. Nudge
    // the first waiter to come and take it, unless one is nudged already.
    void nudge() noexcept {
        if constexpr (!Concurrency::fifo) {
            if (nudged_ == nullptr && head_ != nullptr) {
                nudged_ = head_;
                head_->slot.publish(waiter::nudged);
            }
        }
    }

    // May a caller that is not first in line take an idle connection? Only
    // when nobody waits; barging, when no waiter has run out of patience.
    bool may_overtake() const noexcept {
        if constexpr (Concurrency::fifo)
            return head_ == nullptr;
        else
            return head_ == nullptr || !head_->starving;
    }

    // Under the lock: a waiter whose wait ended leaves the line.
    void dequeue(waiter* w) noexcept {
        unlink(w);
        --waiting_;
    }

    // Under the lock: takes `w` out of the line with its outcome.
    void serve(waiter* w, typename waiter::state_t state, info* c = nullptr, chain* ch = nullptr,
               std::shared_ptr<const connect_error> error = nullptr) noexcept {
        unlink(w);
        --waiting_; // from now on it is no longer waiting, whenever it wakes
        w->conn = c;
        w->ch = ch;
        w->error = std::move(error);
        w->slot.publish(state); // the last touch: the waiter may be gone from here on
    }

    [[noreturn]] void throw_exhausted(std::unique_lock<typename Concurrency::mutex_type>& lock, const char* why) {
        const pool_stats s = snapshot();
        lock.unlock();
        notify(event::exhausted);
        throw exhausted_error(
            std::string("pqpool: no connection available without waiting (") + why + "): " + describe(s), s);
    }

    // The caller's wait ended. When connects were failing meanwhile, the error
    // says so and carries the last failure: a wrong password or an unreachable
    // server must not hide behind "timed out".
    [[noreturn]] void throw_timeout(std::unique_lock<typename Concurrency::mutex_type>& lock,
                                    std::chrono::milliseconds wait, waiter* in_line = nullptr,
                                    std::chrono::milliseconds connecting_for = {}) {
        const pool_stats s = snapshot(); // the caller still counts as waiting: it was, until now
        if (in_line) dequeue(in_line);
        std::shared_ptr<const connect_error> failure = failing_ ? last_failure_ : nullptr;
        lock.unlock();
        notify(event::timeout, [&](event_type& e) {
            if (wait != std::chrono::milliseconds::max()) e.wait = wait;
            if (failure) describe_failure(e, *failure);
        });
        std::string what = "pqpool: acquire timed out after " + show_wait(wait) + ": " + describe(s);
        if (failure) {
            std::string_view cause = failure->what();
            if (cause.substr(0, 8) == "pqpool: ") cause.remove_prefix(8);
            what += "; connecting is failing: ";
            what += cause;
        } else if (connecting_for.count() > 0) {
            what += "; its connect has had no answer for " + std::to_string(connecting_for.count()) +
                    " ms (a slow or silent server?) and goes on for the next caller";
        }
        throw timeout_error(std::move(what), s, std::move(failure));
    }

    static std::string show_wait(std::chrono::milliseconds wait) {
        return wait == std::chrono::milliseconds::max() ? std::string("an unlimited wait")
                                                        : std::to_string(wait.count()) + " ms";
    }

    // An idle connection the caller now holds (counted in in_use_): checked by
    // recycling and validation, or closed (false). On false, the caller is
    // pinned (`pinned` says whether it was already) and the slot of the closed
    // connection is kept for it, so it keeps its place in line.
    bool hand_out(info* c, deadline_type& until, bool pinned) {
        const time_point now = timed ? coarse_now<clock>() : time_point{};
        if (current_epoch(*c) && recycling_.keep_on_acquire(*c, now)) [[likely]] {
            if (validation_.validate(connector_, *c, now, until)) [[likely]] {
                ++c->uses;
                return true;
            }
            retire_handed(c, event::validation_failed, pinned);
        } else {
            retire_handed(c, event::retired, pinned);
        }
        return false;
    }

    [[gnu::noinline]] void retire_handed(info* c, event why, bool pinned) noexcept {
        if constexpr (!obs_silent) {
            const time_point now = timed ? coarse_now<clock>() : time_point{};
            notify_closed(why, *c, why == event::validation_failed ? close_reason::validation : retire_reason(*c, now));
        }
        connector_.discard(c->handle); // never waits: the acquire keeps its bound
        delete c;
        std::lock_guard lock(mutex_);
        --in_use_;
        if (!pinned) ++pins_;
        // No pass_permit(): the slot stays free for this caller, who goes
        // first (a waiter keeps its place); its pin_guard passes it on if the
        // caller gives up instead.
    }

    // Closes a connection counted in in_use_ (outside the lock), then frees its
    // slot for the first waiter. The outermost step of a release: it may be
    // the last count, and nothing of *this is touched after leave().
    void close_held(info* c) noexcept {
        connector_.close(c->handle);
        delete c;
        std::unique_lock lock(mutex_);
        --in_use_;
        pass_permit();
        leave(lock);
    }

    // As close_held, for a caller that holds a pin (so the core cannot go).
    void close_counted(info* c) noexcept {
        connector_.close(c->handle);
        delete c;
        std::lock_guard lock(mutex_);
        --in_use_;
        pass_permit();
    }

    // Drives a chain (`ch`, or a new one for a fresh permit) until it yields a
    // connection, is parked, or ends. The caller holds a pin; the chain is
    // counted in opening_ throughout.
    drive_result drive(chain* ch, deadline_type& until, backoff mode) {
        if (!ch) {
            try {
                ch = new chain;
            } catch (...) {
                return end_chain(nullptr, std::current_exception(), false);
            }
        }
        for (;;) {
            {
                // No connect starts or goes on once the pool is closed (a
                // waiter served just before close(), a chain handed over).
                std::unique_lock lock(mutex_);
                if (closed_) {
                    lock.unlock();
                    end_chain(ch, nullptr);
                    throw closed_error("pqpool: the pool was closed while connecting");
                }
            }
            if (ch->failures > 0 && mode != backoff::sleep) {
                const time_point now = clock::now();
                if (now < ch->not_before) {
                    if (mode == backoff::give_up) return park(ch);
                    const time_point end = std::min(ch->not_before, until.get());
                    if (info* c = wait_out_backoff(ch, end)) {
                        // Served by a returned connection while backing off: the
                        // chain has no handshake in progress worth keeping, so it
                        // ends and its slot goes to the next waiter (parked, it
                        // would hold a slot with nobody asking for it).
                        end_chain(ch, nullptr);
                        return {drive_result::handed, c};
                    }
                    if (ch->not_before > clock::now()) return park(ch); // the caller's wait ended first
                }
            } else if (ch->failures > 0) {
                const time_point now = clock::now();
                if (now < ch->not_before) sleep_for<clock>(ch->not_before - now);
            }
            handle h{};
            try {
                h = connector_.continue_connect(ch->attempt,
                                                mode == backoff::wait_in_line ? until.get() : time_point::max());
            } catch (const connect_error& e) {
                notify(event::connect_failed, [&](event_type& ev) {
                    describe_failure(ev, e);
                    if constexpr (times_connects) ev.connect_time = clock::now() - ch->since;
                });
                note_failure(e);
                std::optional<std::chrono::nanoseconds> delay;
                if (e.transient()) delay = retry_.next_delay(++ch->failures);
                if (!delay) return end_chain(ch, std::current_exception());
                ch->not_before = saturating_add(clock::now(), *delay);
                ch->since = ch->not_before;
                notify(event::retry, [&](event_type& ev) {
                    ev.backoff = *delay;
                    describe_failure(ev, e);
                });
                continue;
            } catch (...) {
                return end_chain(ch, std::current_exception(), false);
            }
            if (h == handle{}) { // the deadline came first: the next caller goes on
                const auto age = std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - ch->since);
                drive_result r = park(ch);
                r.connecting_for = age;
                return r;
            }
            info* c = ch->record.release();
            [[maybe_unused]] const time_point started = ch->since;
            delete ch;
            c->handle = h;
            c->generation = fork_.generation();
            // The connector that watches its connections stamps each with the
            // epoch it reports against, so that both agree on it.
            if constexpr (requires { connector_.birth_epoch(h); })
                c->epoch = connector_.birth_epoch(h);
            else
                c->epoch = epoch_.load(std::memory_order_relaxed);
            c->id = next_id_.fetch_add(1, std::memory_order_relaxed) + 1;
            if constexpr (timed)
                c->born = c->last_used = coarse_now<clock>();
            else if constexpr (times_connects || times_leases)
                c->born = coarse_now<clock>(); // for the ages in events
            recycling_.on_open(*c, c->born);
            notify(event::connected, [&](event_type& ev) {
                ev.connection = c->id;
                ev.handle = h;
                if constexpr (times_connects) ev.connect_time = clock::now() - started;
            });
            return {drive_result::fresh, c};
        }
    }

    // Waits out a chain's backoff in line (at the front, for connections
    // only), so that a connection returned meanwhile reaches this caller.
    // Returns that connection (counted in in_use_), or null when `end` came.
    info* wait_out_backoff(chain* ch, time_point end) {
        if constexpr (sleeps_itself<clock> || !Concurrency::can_wait) {
            const time_point now = clock::now();
            if (end > now) sleep_for<clock>(end - now);
            (void)ch;
            return nullptr;
        } else {
            std::unique_lock lock(mutex_);
            if (closed_) {
                lock.unlock();
                end_chain(ch, nullptr);
                throw closed_error("pqpool: the pool was closed while connecting");
            }
            if (!idle_.empty()) { // never wait in line while a connection is idle
                info* c = idle_.pop();
                ++in_use_;
                return c;
            }
            waiter w;
            w.accepts_chain = false;
            w.holds_chain = true;
            w.first = true;
            wait_in_line(lock, w, end);
            const auto state = w.slot.state();
            if (state == waiter::waiting) dequeue(&w); // the lock is held only then
            if (state == waiter::got_connection) return w.conn;
            if (state == waiter::closed) {
                end_chain(ch, nullptr);
                throw closed_error("pqpool: the pool was closed while connecting");
            }
            return nullptr;
        }
    }

    // The caller stops driving `ch` with work left: the first waiter that
    // connects takes it over, or the next caller (or maintain()) finds it.
    drive_result park(chain* ch) noexcept {
        {
            std::lock_guard lock(mutex_);
            if (!closed_) {
                ch->next = parked_;
                parked_ = ch;
                ++parked_count_;
                pass_permit(); // to the first waiter that may connect, if any
                return {drive_result::parked};
            }
        }
        end_chain(ch, nullptr);
        return {drive_result::parked};
    }

    // Under the lock.
    chain* pop_parked() noexcept {
        chain* ch = parked_;
        if (ch) {
            parked_ = ch->next;
            ch->next = nullptr;
            --parked_count_;
        }
        return ch;
    }

    // A chain ends without a connection (`error`; null when closing). Its
    // slot goes to the first waiter; when no connection could come back to
    // the waiters (none in use, none idle), they share the error instead of
    // each spending a budget of its own on the same failing server (a chain
    // still in progress elsewhere goes on; its waiter is not failed).
    drive_result end_chain(chain* ch, std::exception_ptr error, bool connect_failure = true) noexcept {
        if (ch) {
            connector_.cancel_connect(ch->attempt);
            delete ch;
        }
        std::lock_guard lock(mutex_);
        --opening_;
        const bool nothing = idle_.empty() && in_use_ == 0;
        if (nothing && error && connect_failure && last_failure_)
            fail_waiters(last_failure_);
        else
            pass_permit();
        return {drive_result::failed, nullptr, std::move(error), nothing || !connect_failure};
    }

    // A server that answers a connect with "shutting down" (57P01, 57P02) or
    // "starting up, cannot connect now" (57P03) is going through a restart or
    // a failover: the connections opened to it before are retired. (A
    // network failure while connecting says nothing about them; what the
    // connections themselves see, the connector reports through the epoch.)
    static bool server_gone(const std::string& sqlstate) noexcept {
        return sqlstate == "57P01" || sqlstate == "57P02" || sqlstate == "57P03";
    }

    bool current_epoch(const info& c) const noexcept { return c.epoch == epoch_.load(std::memory_order_relaxed); }

    void note_failure(const connect_error& e) noexcept {
        if (server_gone(e.sqlstate())) invalidate();
        std::shared_ptr<const connect_error> copy;
        try {
            copy = std::make_shared<const connect_error>(e);
        } catch (...) {}
        std::lock_guard lock(mutex_);
        failing_ = true;
        if (copy) last_failure_ = std::move(copy);
    }

    // A fresh connection (counted in opening_) becomes the caller's lease.
    lease_type settle_as_lease(info* c) {
        {
            std::lock_guard lock(mutex_);
            --opening_;
            failing_ = false;
            if (!closed_) {
                ++in_use_;
                c->uses = 1;
                pass_permit(); // a connect slot freed: the next waiter may open one
                return lease_type(this, c);
            }
        }
        notify_closed(event::retired, *c, close_reason::pool_closed);
        connector_.close(c->handle);
        delete c;
        throw closed_error("pqpool: the pool was closed while connecting");
    }

    // A fresh connection (counted in opening_) that nobody asked for yet
    // (maintain): to the first waiter, else idle, else closed.
    void settle_as_idle(info* c) noexcept {
        [[maybe_unused]] bool pool_closed = false;
        {
            std::lock_guard lock(mutex_);
            pool_closed = closed_;
            --opening_;
            failing_ = false;
            if (!closed_) {
                if (waiter* w = head_) {
                    ++in_use_;
                    w->fresh = true;
                    serve(w, waiter::got_connection, c);
                    return;
                }
                if (idle_.size() < overflow_.keep_idle() && push_idle(c)) {
                    pass_permit();
                    return;
                }
            }
            pass_permit();
        }
        if (pool_closed)
            notify_closed(event::retired, *c, close_reason::pool_closed);
        else
            notify_closed(event::trimmed, *c, close_reason::surplus);
        connector_.close(c->handle);
        delete c;
    }

    // Out of memory growing the stack: false (the caller closes the
    // connection rather than lose it).
    bool push_idle(info* c) noexcept {
        if (idle_.size() == idle_.capacity()) {
            if (!idle_.reserve(std::max<std::size_t>(4, 2 * idle_.capacity()))) return false;
            set_idle_limit();
        }
        idle_.push(c);
        return true;
    }

    // The release fast path pushes while the stack is below this: within its
    // capacity and what the overflow policy keeps idle; 0 once closed.
    void set_idle_limit() noexcept { idle_limit_ = closed_ ? 0 : std::min(idle_.capacity(), overflow_.keep_idle()); }

    // Room for one more connection, and for one more connect in flight?
    bool may_open() const noexcept { return size() < overflow_.max_size() && opening_ < retry_.max_connecting(); }

    // A slot, a connect permit or a parked chain may be free: give it to the
    // first waiter (those waiting out their own chain's backoff aside). A
    // waiter whose own connects failed takes it only once connecting works
    // again (someone connected since) or nothing could come back to it
    // (nothing in use or idle); until then nobody behind it may start a
    // connect either: first come, first served, and no hammering of a
    // failing server while connections are out that will come back.
    void pass_permit() noexcept {
        if (closed_) return;
        if constexpr (!Concurrency::fifo) {
            if (!idle_.empty()) return nudge(); // barging: an idle connection first, not a new one
        }
        for (waiter* w = head_; w; w = w->next) {
            if (w->holds_chain) continue;
            if (!w->accepts_chain && failing_ && (in_use_ != 0 || !idle_.empty())) return;
            if (chain* ch = pop_parked()) {
                serve(w, waiter::got_chain, nullptr, ch);
            } else if (may_open()) {
                ++opening_;
                serve(w, waiter::got_chain);
            }
            return;
        }
    }

    // Every waiter but those waiting out their own chain's backoff.
    void fail_waiters(const std::shared_ptr<const connect_error>& error) noexcept {
        for (waiter* w = head_; w;) {
            waiter* next = w->next;
            if (!w->holds_chain) serve(w, waiter::failed, nullptr, nullptr, error);
            w = next;
        }
    }

    // After a count went down: if the pool object is gone and nobody is left
    // inside, delete the core. Returns true when it did (the lock is then
    // released and nothing of *this may be touched).
    bool leave(std::unique_lock<typename Concurrency::mutex_type>& lock) noexcept {
        if (!orphaned_ || in_use_ + opening_ + pins_ + inherited_ != 0) return false;
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
    // parked connect, and start afresh. Leases taken before the fork are no
    // longer counted; the threads that waited or connected do not exist here.
    // Their pins stay counted (this thread's own may be among them), so in a
    // child whose other threads were inside the pool the core is never freed:
    // a leak, never a use after free.
    void after_fork(std::uint64_t now_gen) noexcept {
        notify(event::fork_detected);
        for (info* c : idle_) {
            notify_closed(event::retired, *c, close_reason::fork);
            connector_.abandon(c->handle);
            delete c;
        }
        if constexpr (tracks_leaks) { // the leases in it are inherited; their lock may have been held at the fork
            std::construct_at(&leaks_.mutex);
            leaks_.head = nullptr;
        }
        idle_.clear();
        while (chain* ch = pop_parked()) {
            connector_.abandon_connect(ch->attempt);
            delete ch;
        }
        inherited_ += in_use_;
        in_use_ = 0;
        opening_ = 0;
        waiting_ = 0;
        head_ = tail_ = nullptr;
        nudged_ = nullptr;
        generation_.store(now_gen, std::memory_order_release);
    }

    void release_inherited(info* c) noexcept {
        notify_closed(event::retired, *c, close_reason::fork);
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
        s.epoch = epoch_.load(std::memory_order_relaxed);
        return s;
    }

    // Callers served once before go ahead of those that never were, and in
    // their own order among themselves; the others queue at the back.
    void enqueue(waiter* w) noexcept {
        waiter* before = w->first ? nullptr : tail_;
        if (w->first)
            for (waiter* x = head_; x && x->first; x = x->next) before = x;
        w->prev = before;
        w->next = before ? before->next : head_;
        (w->prev ? w->prev->next : head_) = w;
        (w->next ? w->next->prev : tail_) = w;
    }

    void unlink(waiter* w) noexcept {
        if constexpr (!Concurrency::fifo) {
            if (w == nudged_) nudged_ = nullptr;
        }
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
    [[no_unique_address]] Concurrency concurrency_;
    mutable typename Concurrency::mutex_type mutex_;
    pointer_stack<info> idle_; // the most recently returned connection is reused first
    std::size_t idle_limit_ = 0;
    spin_gauge spin_gauge_;
    waiter* nudged_ = nullptr; // barging: the waiter nudged to take an idle connection
    std::size_t in_use_ = 0;
    std::size_t opening_ = 0;   // chains, parked ones included
    std::size_t waiting_ = 0;   // callers in line, not yet served
    std::size_t pins_ = 0;      // threads inside a slow operation
    std::size_t inherited_ = 0; // leases taken before a fork, still out in this (child) process
    chain* parked_ = nullptr;   // connects in progress that no caller drives right now
    std::size_t parked_count_ = 0;
    waiter* head_ = nullptr;
    waiter* tail_ = nullptr;
    std::shared_ptr<const connect_error> last_failure_;
    bool failing_ = false;                // connects have failed since the last success
    std::atomic<std::uint64_t> epoch_{0}; // invalidations; a connection of an older one is retired
    std::atomic<std::uint64_t> generation_;
    std::atomic<std::uint64_t> adopting_; // the generation whose takeover has been claimed
    bool closed_ = false;
    bool orphaned_ = false;
    std::atomic<std::uint64_t> next_id_{0}; // connections opened so far
    [[no_unique_address]] std::conditional_t<tracks_leaks, leak_list, no_fields<3>> leaks_;
};

} // namespace pqpool::detail
