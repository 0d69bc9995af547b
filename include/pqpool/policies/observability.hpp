#pragma once

/// \file
/// Observability: what the pool tells about itself besides `stats()`.
///
/// | policy           | cost per acquire + release (one thread, measured with callgrind: `scripts/bench`) |
/// |------------------|----------------------------------------------------------------------|
/// | `none`           | nothing: not one instruction (default)                               |
/// | `counters`       | three clock reads and four relaxed atomic additions                  |
/// | `histograms`     | three clock reads and four relaxed atomic additions                  |
/// | `leak_detection` | two coarse clock reads, and a lock and unlock at acquire and at release (a list of leases out) |
/// | `sink<F>`        | what `F` asks for (nothing when it asks for no lease events) plus its calls |
/// | `combine<P...>`  | the union of what its members ask for (clocks are read once for all) |
///
/// The clock is `Connector::clock` (`steady_clock`: about 20 ns a read through
/// the vDSO); "coarse" is `CLOCK_MONOTONIC_COARSE` (a few ns). Rare events
/// (connects, failures, closes, timeouts) cost a call each, and a clock read
/// when the policy asks for connect times.
///
/// Related headers: `pqpool/observability/logfmt.hpp` (a sink that writes one
/// line per event to a `std::ostream`), `pqpool/observability/prometheus.hpp`
/// (the Prometheus text exposition with OpenTelemetry's names),
/// `pqpool/observability/tls.hpp` (TLS facts: protocol, cipher, server
/// certificate expiry; needs OpenSSL).

#include <pqpool/detail/check.hpp>
#include <pqpool/event.hpp>
#include <pqpool/histogram.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

namespace pqpool {

/// The category tag of observability policies.
struct observability_tag {};

/// An observability policy.
///
/// Minimal complete definition: `category` (= `observability_tag`), copy
/// construction, and `void on_event(const event_info<Handle>&) noexcept`
/// (usually a template over `Handle`, the connector's handle type).
///
/// What the pool measures for it is asked for with `static constexpr bool`
/// members; each one left out is false and costs nothing:
/// - `lease_events`: `on_event` also receives `acquired` and `returned`, on
///   every acquire and release (the plain path);
/// - `times_leases`: those carry `wait` and `hold` (implies `lease_events`;
///   three clock reads per acquire + release);
/// - `times_connects`: connects carry `connect_time`, and events about a
///   connection its `age` (a clock read per connect and per such event);
/// - `tracks_leaks`, with `std::chrono::milliseconds leak_threshold() const`:
///   the pool records where each lease was acquired (`source_location`)
///   and reports leases out longer than the threshold (`leak_suspected`,
///   then `leak_returned`);
/// - `silent`: the policy ignores every event, so the pool does not even
///   build them (`none`).
///
/// Laws: `on_event` does not throw; it may be called from several threads at
/// once; it must not call the pool (`fork_detected` and the `retired` events
/// of connections abandoned after a fork are delivered with the pool's lock
/// held; the other events outside it). It runs on the thread whose call
/// caused the event, and what it takes adds to that call's time: the bounds
/// of `acquire()` and `acquire_for()` cover the pool's work, not the
/// observer's (one that blocks holds up that call, and no other). Optionally `void check() const`
/// throws `config_error` for numbers out of range (called by the pool's
/// constructor). A policy without a default constructor (a sink of a lambda
/// that captures) must be passed to the pool's constructor.
template <class P, class Handle = void*>
concept observability_policy = std::same_as<typename P::category, observability_tag> && std::copy_constructible<P> &&
    requires(P& p, const event_info<Handle>& e) {
    { p.on_event(e) }
    noexcept;
};

namespace detail {

// What the pool does for an observability policy, from the flags it declares.
// (A flag left out is false.)
template <class P>
struct observer_traits {
    static constexpr bool silent = [] {
        if constexpr (requires { P::silent; }) return static_cast<bool>(P::silent);
        return false;
    }();
    static constexpr bool times_leases = !silent && [] {
        if constexpr (requires { P::times_leases; }) return static_cast<bool>(P::times_leases);
        return false;
    }();
    static constexpr bool lease_events = !silent && (times_leases || [] {
        if constexpr (requires { P::lease_events; }) return static_cast<bool>(P::lease_events);
        return false;
    }());
    static constexpr bool times_connects = !silent && [] {
        if constexpr (requires { P::times_connects; }) return static_cast<bool>(P::times_connects);
        return false;
    }();
    static constexpr bool tracks_leaks = !silent && [] {
        if constexpr (requires { P::tracks_leaks; }) return static_cast<bool>(P::tracks_leaks);
        return false;
    }();
    static_assert(
        !tracks_leaks ||
            requires(const P& p) {
                { p.leak_threshold() } -> std::same_as<std::chrono::milliseconds>;
            },
        "pqpool: an observability policy that tracks leaks needs 'std::chrono::milliseconds leak_threshold() const'");
};

} // namespace detail

namespace observability {

/// Nothing is recorded, and the pool builds no event. Costs nothing: a pool
/// with `none` executes exactly the instructions it would without any
/// observability. The default.
struct none {
    using category = observability_tag;
    static constexpr bool silent = true;
    template <class Handle>
    void on_event(const event_info<Handle>&) noexcept {}
};

/// Counts events by kind (`count(event)`) and closed connections by reason
/// (`closed(close_reason)`), and sums the waits of acquires, the holds of
/// leases and the connect times (`wait_total()` over `count(event::acquired)`
/// is the mean wait). Cost: three clock reads and four relaxed atomic
/// additions per acquire + release (counts and sums; one cache line shared by
/// every thread).
class counters {
public:
    using category = observability_tag;
    static constexpr bool times_leases = true;
    static constexpr bool times_connects = true;

    counters() = default;
    /// Copies the counts as they are at this moment.
    counters(const counters& other) noexcept {
        copy(events_, other.events_);
        copy(closes_, other.closes_);
        wait_ns_.store(other.wait_ns_.load(std::memory_order_relaxed), std::memory_order_relaxed);
        hold_ns_.store(other.hold_ns_.load(std::memory_order_relaxed), std::memory_order_relaxed);
        connect_ns_.store(other.connect_ns_.load(std::memory_order_relaxed), std::memory_order_relaxed);
    }
    counters& operator=(const counters&) = delete;

    template <class Handle>
    void on_event(const event_info<Handle>& e) noexcept {
        events_[static_cast<std::size_t>(e.kind)].fetch_add(1, std::memory_order_relaxed);
        if (e.reason != close_reason::none)
            closes_[static_cast<std::size_t>(e.reason)].fetch_add(1, std::memory_order_relaxed);
        if (e.kind == event::acquired && e.wait)
            add(wait_ns_, *e.wait);
        else if (e.kind == event::returned && e.hold)
            add(hold_ns_, *e.hold);
        else if (e.kind == event::connected && e.connect_time)
            add(connect_ns_, *e.connect_time);
    }

    /// How many times `e` happened.
    std::uint64_t count(event e) const noexcept {
        return events_[static_cast<std::size_t>(e)].load(std::memory_order_relaxed);
    }
    /// How many connections were closed for reason `r`.
    std::uint64_t closed(close_reason r) const noexcept {
        return closes_[static_cast<std::size_t>(r)].load(std::memory_order_relaxed);
    }
    /// The sum of the waits of `count(event::acquired)` acquires.
    std::chrono::nanoseconds wait_total() const noexcept { return load(wait_ns_); }
    /// The sum of the holds of `count(event::returned)` leases.
    std::chrono::nanoseconds hold_total() const noexcept { return load(hold_ns_); }
    /// The sum of the connect times of `count(event::connected)` connections.
    std::chrono::nanoseconds connect_total() const noexcept { return load(connect_ns_); }

private:
    template <std::size_t N>
    static void copy(std::array<std::atomic<std::uint64_t>, N>& to,
                     const std::array<std::atomic<std::uint64_t>, N>& from) noexcept {
        for (std::size_t i = 0; i < N; ++i)
            to[i].store(from[i].load(std::memory_order_relaxed), std::memory_order_relaxed);
    }
    static void add(std::atomic<std::uint64_t>& sum, std::chrono::nanoseconds d) noexcept {
        sum.fetch_add(d.count() > 0 ? static_cast<std::uint64_t>(d.count()) : 0, std::memory_order_relaxed);
    }
    static std::chrono::nanoseconds load(const std::atomic<std::uint64_t>& sum) noexcept {
        return std::chrono::nanoseconds{
            static_cast<std::chrono::nanoseconds::rep>(sum.load(std::memory_order_relaxed))};
    }

    std::array<std::atomic<std::uint64_t>, event_count> events_{};
    std::array<std::atomic<std::uint64_t>, close_reason_count> closes_{};
    std::atomic<std::uint64_t> wait_ns_{0}, hold_ns_{0}, connect_ns_{0};
};

/// Latency histograms (`log_histogram`: log-scale buckets, lock-free,
/// readable at any time, with percentiles) of the acquire wait (`wait()`,
/// every acquire that got a connection), the hold time of leases (`hold()`)
/// and the connect time of new connections (`connect()`): a p99 acquire
/// wait is `pool.observer().wait().percentile(0.99)`. Cost: three clock reads
/// and four relaxed atomic additions per acquire + release.
class histograms {
public:
    using category = observability_tag;
    static constexpr bool times_leases = true;
    static constexpr bool times_connects = true;

    template <class Handle>
    void on_event(const event_info<Handle>& e) noexcept {
        if (e.kind == event::acquired && e.wait)
            wait_.record(*e.wait);
        else if (e.kind == event::returned && e.hold)
            hold_.record(*e.hold);
        else if (e.kind == event::connected && e.connect_time)
            connect_.record(*e.connect_time);
    }

    /// How long acquires took to get a connection (validation and connects included).
    const log_histogram& wait() const noexcept { return wait_; }
    /// How long leases held their connection.
    const log_histogram& hold() const noexcept { return hold_; }
    /// How long successful connects took.
    const log_histogram& connect() const noexcept { return connect_; }

private:
    log_histogram wait_, hold_, connect_;
};

/// Calls `F` for each event: `f(const event_info<Handle>&)`, directly (the
/// callable's type is part of the pool's type; no `std::function`). `F` may
/// declare the flags of `observability_policy` (`lease_events`,
/// `times_leases`, `times_connects`) to ask for more; by default it gets the
/// rare events only, and a pool with a sink costs nothing on the plain
/// acquire and release. `F` must not throw (the pool calls it from
/// `noexcept` code: an exception terminates) and is called from several
/// threads at once. Without a default constructor (a lambda that captures),
/// the sink must be passed to the pool's constructor.
template <class F>
class sink {
public:
    using category = observability_tag;
    static constexpr bool lease_events = detail::observer_traits<F>::lease_events;
    static constexpr bool times_leases = detail::observer_traits<F>::times_leases;
    static constexpr bool times_connects = detail::observer_traits<F>::times_connects;

    sink() requires std::default_initializable<F>
    = default;
    explicit sink(F f) : f_(std::move(f)) {}

    template <class Handle>
    void on_event(const event_info<Handle>& e) noexcept {
        f_(e);
    }

    /// The callable.
    const F& callable() const noexcept { return f_; }
    F& callable() noexcept { return f_; }

private:
    [[no_unique_address]] F f_{};
};

/// Reports leases held longer than `threshold`: the pool records where each
/// lease was acquired (the `source_location` of the call to `acquire`,
/// `acquire_for`, `try_acquire` or `run`), and a lease out longer than the
/// threshold is reported once as `leak_suspected` (with that location, the
/// connection and how long it has been out), then as `leak_returned` when it
/// comes back (so a false alarm shows as one). Combine it with a sink or
/// `counters` to see the reports (`combine<leak_detection, sink<...>>`).
///
/// There is no thread of its own: the pool looks for overdue leases during
/// its own calls (`acquire`, `acquire_for`, `try_acquire`, `run`, a lease's
/// return: at most once per `threshold / 8`, so each look costs one relaxed
/// load in between) and at every `maintain()`. So a lease is reported at the
/// first of those calls made at least `threshold` after it was acquired, and
/// no later than `threshold / 8` after that while the pool is busy; a pool
/// nobody calls reports at its next call, or at the next `maintain()` from
/// the program's timer. A look on an acquire or a return reports at most 16
/// leases (the next call looks again at once for the rest), so that the
/// events it delivers stay bounded; `maintain()` reports every one.
/// `milliseconds::max()` means no limit: nothing is ever reported. Cost: a coarse clock read and a lock and unlock of a
/// lock of its own at acquire and at release (when no other policy reads the
/// precise clock).
struct leak_detection {
    using category = observability_tag;
    static constexpr bool tracks_leaks = true;
    /// A lease out longer than this is reported (at least 1 ms).
    std::chrono::milliseconds threshold{std::chrono::seconds{60}};

    void check() const { detail::check_positive("observability::leak_detection", "threshold", threshold); }
    std::chrono::milliseconds leak_threshold() const noexcept { return threshold; }
    template <class Handle>
    void on_event(const event_info<Handle>&) noexcept {}
};

/// Feeds every event to several policies, e.g.
/// `combine<histograms, leak_detection, sink<logfmt_writer>>`. The pool
/// measures what any member asks for, once for all of them; a member that
/// does not ask for lease events does not receive them. Read a member with
/// `get<T>()`. Construct from member objects in order (members not given
/// are default-constructed): `combine<A, B>{a, b}`.
template <class... Ps>
class combine {
    static_assert(sizeof...(Ps) > 0, "pqpool: observability::combine needs at least one policy");
    static_assert((std::same_as<typename Ps::category, observability_tag> && ...),
                  "pqpool: observability::combine takes observability policies only");
    static_assert((int{detail::observer_traits<Ps>::tracks_leaks} + ... + 0) <= 1,
                  "pqpool: observability::combine: at most one member may track leaks");

public:
    using category = observability_tag;
    static constexpr bool silent = (detail::observer_traits<Ps>::silent && ...);
    static constexpr bool lease_events = (detail::observer_traits<Ps>::lease_events || ...);
    static constexpr bool times_leases = (detail::observer_traits<Ps>::times_leases || ...);
    static constexpr bool times_connects = (detail::observer_traits<Ps>::times_connects || ...);
    static constexpr bool tracks_leaks = (detail::observer_traits<Ps>::tracks_leaks || ...);

    combine() requires(std::default_initializable<Ps>&&...) = default;
    template <class... Given>
    requires(sizeof...(Given) > 0 && sizeof...(Given) <= sizeof...(Ps) &&
             !(sizeof...(Given) == 1 &&
               (std::same_as<std::remove_cvref_t<Given>, combine> && ...))) explicit combine(Given&&... given)
        : members_(make(std::forward<Given>(given)...)) {}

    template <class Handle>
    void on_event(const event_info<Handle>& e) noexcept {
        const bool lease = e.kind == event::acquired || e.kind == event::returned;
        std::apply([&](auto&... p) { (deliver(p, e, lease), ...); }, members_);
    }

    void check() const {
        std::apply([](const auto&... p) { (check_one(p), ...); }, members_);
    }

    std::chrono::milliseconds leak_threshold() const noexcept requires tracks_leaks {
        std::chrono::milliseconds t{0};
        std::apply([&](const auto&... p) { (threshold_of(p, t), ...); }, members_);
        return t;
    }

    /// The member of type `T` (named once among `Ps`).
    template <class T>
    const T& get() const noexcept {
        return std::get<T>(members_);
    }
    template <class T>
    T& get() noexcept {
        return std::get<T>(members_);
    }
    /// Whether `T` is a member.
    template <class T>
    static constexpr bool has = (std::same_as<T, Ps> || ...);

private:
    template <class P, class Handle>
    static void deliver(P& p, const event_info<Handle>& e, bool lease) noexcept {
        if constexpr (detail::observer_traits<P>::lease_events)
            p.on_event(e);
        else if (!lease)
            p.on_event(e);
    }
    template <class P>
    static void check_one(const P& p) {
        if constexpr (requires { p.check(); }) p.check();
    }
    template <class P>
    static void threshold_of(const P& p, std::chrono::milliseconds& t) noexcept {
        if constexpr (detail::observer_traits<P>::tracks_leaks) t = p.leak_threshold();
    }
    template <class... Given>
    static std::tuple<Ps...> make(Given&&... given) {
        return make_from(std::index_sequence_for<Ps...>{}, std::forward_as_tuple(std::forward<Given>(given)...));
    }
    template <std::size_t... I, class Tuple>
    static std::tuple<Ps...> make_from(std::index_sequence<I...>, Tuple&& given) {
        return std::tuple<Ps...>(element<I, Ps>(given)...);
    }
    template <std::size_t I, class P, class Tuple>
    static P element(Tuple& given) {
        if constexpr (I < std::tuple_size_v<Tuple>)
            return P(std::forward<std::tuple_element_t<I, Tuple>>(std::get<I>(given)));
        else
            return P{};
    }

    std::tuple<Ps...> members_;
};

/// What `pqpool::pool<>` uses when no observability policy is named.
using default_policy = none;

} // namespace observability

namespace detail {

// The policy of type T within an observability policy: itself, or a member
// of a combine; null when it has none (the exposition reads what it finds).
template <class T, class P>
const T* find_observer(const P& p) noexcept {
    if constexpr (std::is_same_v<T, P>)
        return &p;
    else if constexpr (requires { P::template has<T>; }) {
        if constexpr (P::template has<T>)
            return &p.template get<T>();
        else
            return nullptr;
    } else
        return nullptr;
}

} // namespace detail
} // namespace pqpool
