#pragma once

/// \file
/// `pqpool::basic_pool`: the pool, one parameter per category. Users name it
/// through `pqpool::pool<…>`, which takes the policies in any order.

#include <pqpool/connection_info.hpp>
#include <pqpool/connector/concept.hpp>
#include <pqpool/detail/core.hpp>
#include <pqpool/detail/select.hpp>
#include <pqpool/error.hpp>
#include <pqpool/lease.hpp>
#include <pqpool/stats.hpp>

#include <chrono>
#include <concepts>
#include <exception>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace pqpool {

namespace detail {

template <class T, class P>
const T* if_same(const P& p) noexcept {
    if constexpr (std::is_same_v<T, P>)
        return &p;
    else
        return nullptr;
}

// The policy object of type T among the constructor's arguments, or T{}.
template <class T, class... Ps>
T policy_argument(const Ps&... ps) {
    constexpr std::size_t n = (std::size_t{std::is_same_v<T, Ps>} + ... + 0);
    static_assert(n <= 1, "pqpool::pool: the same policy object is passed twice to the constructor");
    if constexpr (n == 0) {
        static_assert(std::is_default_constructible_v<T>,
                      "pqpool::pool: this policy has no default (e.g. a sink of a lambda that captures): pass the "
                      "policy object to the constructor");
        if constexpr (std::is_default_constructible_v<T>)
            return T{};
        else
            std::terminate(); // never compiled into a program: the static_assert above has failed
    } else {
        const T* found = nullptr;
        ((found = found ? found : if_same<T>(ps)), ...);
        return *found;
    }
}

template <class T, class... Ts>
inline constexpr bool one_of = (std::is_same_v<T, Ts> || ...);

template <class P>
void check_policy(const P& p) {
    if constexpr (requires { p.check(); }) p.check();
}

} // namespace detail

/// A pool of connections whose behaviour is fixed at compile time by one
/// policy per category:
///
/// | parameter       | concept                | default                          |
/// |-----------------|------------------------|----------------------------------|
/// | `Connector`     | `connector`            | `libpq_connector`                |
/// | `Validation`    | `validation_policy`    | `validation::ping_if_idle` (1 s) |
/// | `Recycling`     | `recycling_policy`     | `recycling::limits` (30 min − up to 1 min, rollback on return) |
/// | `Overflow`      | `overflow_policy`      | `overflow::bounded` (5 + 10, 30 s) |
/// | `Retry`         | `retry_policy`         | `retry::exponential_backoff` (5 attempts, 100 ms … 3 s) |
/// | `ForkSafety`    | `fork_safety_policy`   | `fork_safety::detect`            |
/// | `Concurrency`   | `concurrency_policy`   | `concurrency::mutex`             |
/// | `Observability` | `observability_policy` | `observability::none`            |
///
/// The pool has no virtual function and calls its policies directly; a
/// policy without numbers takes no space. Connections are opened on demand,
/// never while the pool's lock is held.
///
/// Destroying the pool closes its idle connections and wakes every waiter
/// with `closed_error`; leases still out stay valid and their connections are
/// closed when they are returned (the pool's internals live until the last
/// lease is back). A thread already inside `acquire`, `acquire_for`,
/// `try_acquire`, `run` or `maintain` when the pool is destroyed finishes
/// safely: it gets `closed_error` (or, from `run`, what its work returned).
/// Destroying it while another thread is *entering* a member function is, as
/// for any object, undefined.
///
/// A moved-from pool is empty: `valid()` is false, `close()` does nothing and
/// every other member throws `closed_error`.
template <class Connector, class Validation, class Recycling, class Overflow, class Retry, class ForkSafety,
          class Concurrency, class Observability>
class basic_pool {
    using core_type =
        detail::pool_core<Connector, Validation, Recycling, Overflow, Retry, ForkSafety, Concurrency, Observability>;

public:
    using connector_type = Connector;
    using validation_policy_type = Validation;
    using recycling_policy_type = Recycling;
    using overflow_policy_type = Overflow;
    using retry_policy_type = Retry;
    using fork_safety_policy_type = ForkSafety;
    using concurrency_policy_type = Concurrency;
    using observability_policy_type = Observability;
    using handle = typename Connector::handle;
    using clock = typename Connector::clock;
    using lease = pqpool::lease<core_type>;
    /// The caller's location that `acquire`, `acquire_for`, `try_acquire`
    /// and `run` take as a defaulted last argument: `pqpool::source_location`
    /// (`std::source_location` where the standard library has it)
    /// when the observability policy tracks leaks (it is recorded with the
    /// lease and named in leak reports), otherwise an empty type that costs
    /// nothing. Leave the argument out.
    using source_location_type = typename core_type::location_type;

    /// Takes the connector (or what constructs it, e.g. a conninfo string)
    /// and then policy objects, in any order; a policy not passed is
    /// default-constructed.
    /// Throws `config_error` when a policy's numbers are out of range, or
    /// whatever the connector's constructor throws for bad input.
    template <class ConnectorArg, class... Policies>
    requires std::constructible_from<Connector, ConnectorArg&&>
    explicit basic_pool(ConnectorArg&& connector, const Policies&... policies)
        : core_(make_core(Connector(std::forward<ConnectorArg>(connector)), policies...)) {}

    basic_pool(const basic_pool&) = delete;
    basic_pool& operator=(const basic_pool&) = delete;
    basic_pool(basic_pool&& other) noexcept : core_(std::exchange(other.core_, nullptr)) {}
    /// Leaves the other pool empty (`valid()` false); the pool assigned to is
    /// closed as if destroyed.
    basic_pool& operator=(basic_pool&& other) noexcept {
        if (this != &other) {
            if (core_) core_->shutdown();
            core_ = std::exchange(other.core_, nullptr);
        }
        return *this;
    }
    ~basic_pool() {
        if (core_) core_->shutdown();
    }

    /// Is this pool usable (not moved from)? Closing does not change it.
    bool valid() const noexcept { return core_ != nullptr; }

    /// Borrows a connection, waiting up to the overflow policy's timeout.
    ///
    /// Returns or throws within that wait plus a small margin (the time to
    /// close connections it gave up on and to take the lock; a few
    /// milliseconds), whatever happens inside: validation round trips,
    /// connects and retries it starts get only the time it has left. A
    /// connect that cannot finish in that time is not lost: it stays with the
    /// pool and the next caller (or `maintain()`) goes on with it, so callers
    /// with short waits still warm a cold pool up. The exception is a host
    /// name lookup inside libpq, which blocks (give `hostaddr` to avoid it).
    /// The observability policy is called on the calling thread, outside the
    /// pool's lock: the bound covers the pool's work, and the time its events
    /// spend in the policy is added to this call (a `timeout` event goes out
    /// once the wait has ended, before `timeout_error` is thrown), and to no
    /// other caller's.
    ///
    /// Throws `timeout_error` (carrying the last connect failure when connects
    /// were failing), `exhausted_error` (when the policy forbids waiting),
    /// `connect_error` (when opening one failed after retries and no
    /// connection in use could come back), `closed_error` (closed, destroyed
    /// meanwhile, or moved from).
    /// Complexity: with null policies, one lock and a stack pop.
    lease acquire(source_location_type where = source_location_type::current()) {
        if (!core_) [[unlikely]]
            throw_moved_from();
        return core_->acquire_at(core_->overflow().timeout(), where);
    }

    /// As `acquire()`, waiting at most `timeout` (zero: never wait for
    /// another caller; `milliseconds::max()`: forever). Throws `config_error`
    /// for a negative `timeout`.
    lease acquire_for(std::chrono::milliseconds timeout, source_location_type where = source_location_type::current()) {
        if (!core_ || timeout.count() < 0) [[unlikely]]
            bad_acquire_for(timeout);
        return core_->acquire_at(timeout, where);
    }

    /// Borrows a connection without waiting for another caller to return one:
    /// takes an idle one, or opens one when the overflow policy allows, else
    /// gives no value. Opening is still I/O, bounded by the connector's
    /// connect timeout and the retry policy's budget (not by a wait). Throws
    /// `connect_error` or `closed_error`.
    std::optional<lease> try_acquire(source_location_type where = source_location_type::current()) {
        if (!core_) throw_moved_from();
        return core_->try_acquire_at(where);
    }

    /// Runs `work(handle)` on a connection from the pool and returns what it
    /// returns. When the connection was lost during the work (the connector
    /// reports it broken afterwards: the server restarted, killed the backend,
    /// or the network dropped), the work runs again on a fresh connection,
    /// after the retry policy's backoff, until its budget is spent; then the
    /// last attempt's exception is rethrown, or its result returned. After a
    /// loss, getting the fresh connection is retried the same way when it
    /// fails for a passing reason: a transient `connect_error`, or a
    /// `timeout_error` while connects were failing (a pool that is merely busy
    /// is not waited for twice). The first acquire is not retried: a server
    /// that is down answers as `acquire()` does. Anything else (a constraint violation, a syntax error, a wrong
    /// password) is never retried.
    ///
    /// Only idempotent work belongs here: a loss after the server committed
    /// but before the client heard of it runs the work twice. Throws what
    /// `acquire()` throws, and what `work` throws.
    template <class F>
    requires std::invocable<F&, handle> std::invoke_result_t<F&, handle>
    run(F&& work, source_location_type where = source_location_type::current()) {
        if (!core_) throw_moved_from();
        return core_->run(work, where);
    }

    /// Closes the idle connections, wakes waiters with `closed_error`, and
    /// makes later acquires throw it. Leases out stay valid; their connections
    /// are closed on return. Idempotent; does nothing on a moved-from pool.
    void close() noexcept {
        if (core_) core_->close();
    }

    /// Does now what recycling otherwise does lazily on the next release:
    /// closes idle connections that have idled too long (above the policy's
    /// floor) or expired, then opens connections up to the floor (and goes on
    /// with connects that callers left unfinished), leaving them idle. For
    /// programs that go quiet, or whose callers all use short waits: call it
    /// from a timer. Bounded: at most one connect attempt per missing
    /// connection and per unfinished connect, each bounded by the connector's
    /// connect timeout; it never sleeps a retry backoff (a connect that must
    /// back off is left for the next call). With leak detection, it first
    /// reports every lease out longer than the threshold not reported yet
    /// (see `observability::leak_detection`; an acquire or a return reports
    /// at most 16 at a time). Throws what opening throws, and
    /// `std::bad_alloc` (before any lease is reported) when the list of
    /// overdue leases cannot be allocated.
    maintenance_report maintain() {
        if (!core_) throw_moved_from();
        return core_->maintain();
    }

    /// Retires every connection opened before now: each is closed instead of
    /// handed out at its next acquire or release (or by `maintain()`), and
    /// `stats().epoch` goes up. For an application that learned of a
    /// failover or a credential change by other means; the pool does the
    /// same by itself when a connection sees its server go away or change
    /// role. Cost: one atomic increment; the hot path pays one relaxed load.
    void invalidate() {
        if (!core_) throw_moved_from();
        core_->invalidate();
    }

    /// A consistent snapshot of the pool's counts.
    pool_stats stats() const {
        if (!core_) throw_moved_from();
        return core_->stats();
    }

    /// The overflow policy object (its sizes and wait).
    const Overflow& overflow() const {
        if (!core_) throw_moved_from();
        return core_->overflow();
    }

    /// The observability policy object (e.g. `observability::counters`); what
    /// it recorded may be read at any time, from any thread.
    const Observability& observer() const {
        if (!core_) throw_moved_from();
        return core_->observer();
    }
    /// The recycling policy object (its limits and idle floor).
    const Recycling& recycling() const {
        if (!core_) throw_moved_from();
        return core_->recycling();
    }
    /// The connector.
    const Connector& connector() const {
        if (!core_) throw_moved_from();
        return core_->connector();
    }

private:
    [[noreturn, gnu::noinline]] static void throw_moved_from() {
        throw closed_error("pqpool: this pool was moved from; it holds no connections");
    }
    [[noreturn, gnu::noinline]] void bad_acquire_for(std::chrono::milliseconds timeout) const {
        if (!core_) throw_moved_from();
        throw config_error("pqpool: acquire_for: the wait is " + std::to_string(timeout.count()) +
                           " ms; it must be 0 (do not wait) or more (milliseconds::max() waits forever)");
    }

    template <class... Policies>
    static core_type* make_core(Connector&& c, const Policies&... policies) {
        return construct<Validation, Recycling, Overflow, Retry, ForkSafety, Concurrency, Observability>(std::move(c),
                                                                                                         policies...);
    }

    // The core, from the connector and the policy objects passed (a policy not
    // passed is default-constructed); Ps are the policy types, in the core's
    // parameter order.
    template <class... Ps, class... Policies>
    static core_type* construct(Connector&& c, const Policies&... policies) {
        static_assert((detail::one_of<Policies, Ps...> && ...),
                      "pqpool::pool: a constructor argument is not one of this pool's policies (pass objects of "
                      "the policy types named in pool<...>, or of the defaults of the categories not named)");
        std::tuple<Ps...> ps{detail::policy_argument<Ps>(policies...)...};
        (detail::check_policy(std::get<Ps>(ps)), ...);
        // Connections that maintain() opens up to the floor must be allowed
        // to stay idle, or each would be closed as soon as it came back.
        const Recycling& r = std::get<Recycling>(ps);
        const Overflow& o = std::get<Overflow>(ps);
        if (r.idle_floor() > o.keep_idle())
            throw config_error(
                "pqpool: the recycling policy's idle floor (min_idle = " + std::to_string(r.idle_floor()) +
                ") is more than the overflow policy keeps idle (" + std::to_string(o.keep_idle()) +
                (o.keep_idle() == 0 ? ", none: it closes every connection on release" : ": its size") +
                "); lower min_idle to at most " + std::to_string(o.keep_idle()));
        return new core_type(std::move(c), std::move(std::get<Ps>(ps))...);
    }

    core_type* core_;
};

} // namespace pqpool
