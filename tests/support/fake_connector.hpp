#pragma once

// A connector with no server, for unit tests of the pool's logic: it injects
// faults deterministically and counts every call, and time can be a manual
// clock so tests of lifetimes and backoff never sleep.

#include <pqpool/connector/concept.hpp>
#include <pqpool/error.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace pqpool::test {

// A clock that moves only when told. sleep_for advances it, so the pool's
// backoff sleeps cost no real time.
struct manual_clock {
    using duration = std::chrono::nanoseconds;
    using rep = duration::rep;
    using period = duration::period;
    using time_point = std::chrono::time_point<manual_clock>;
    static constexpr bool is_steady = true;

    static time_point now() noexcept { return time_point{duration{now_.load()}}; }
    static void advance(duration d) noexcept { now_ += d.count(); }
    static void sleep_for(duration d) noexcept {
        slept_ += d.count();
        advance(d);
    }
    static duration slept() noexcept { return duration{slept_.load()}; }
    static void reset() noexcept {
        now_ = std::chrono::nanoseconds{std::chrono::hours{1}}.count();
        slept_ = 0;
    }

private:
    static inline std::atomic<rep> now_{std::chrono::nanoseconds{std::chrono::hours{1}}.count()};
    static inline std::atomic<rep> slept_{0};
};

struct fake_connection {
    int id = 0;
    bool alive = true;          // false: the "server" dropped it (probe and ping fail)
    bool silently_dead = false; // probe passes, ping fails (a dropped network path)
    bool in_transaction = false;
    bool busy = false; // a query still running: reset must refuse
    bool closed = false;
    bool abandoned = false;
    std::atomic<int> leases{0}; // leases holding it right now, as counted by a test (never more than one)
};

// Random faults, for tests that search the state space: each connect attempt,
// ping and reset draws its fate from one seeded generator.
struct chaos {
    double transient = 0;                           // probability that a connect fails transiently
    double permanent = 0;                           // ... permanently
    double reset_fails = 0;                         // probability that a reset refuses the connection
    std::chrono::microseconds max_connect_delay{0}; // uniform in [0, this]
    std::chrono::microseconds max_ping_delay{0};
    std::chrono::microseconds max_busy_close{0}; // closing a busy connection (a cancel) takes up to this
    double slow = 0;                             // probability that a connect or a ping takes slow_delay more
    std::chrono::milliseconds slow_delay{0};     // (a stalled server: far longer than the callers' waits)
};

// What a connect attempt should do.
struct fault {
    enum kind_t { none, transient, permanent, other } kind = none;
    std::string sqlstate;
};

// The state all copies of one fake_connector share (the pool holds a copy).
struct fake_server {
    std::mutex m;
    std::vector<std::unique_ptr<fake_connection>> connections;
    std::deque<fault> faults;                   // consumed by connect attempts, in order
    std::chrono::milliseconds connect_delay{0}; // how long a connect takes (real time; manual time is advanced)
    std::chrono::milliseconds ping_delay{0};    // how long a ping's answer takes (real clock only)
    int connects = 0, attempts = 0, closes = 0, abandons = 0, resets = 0, misuse = 0;
    std::atomic<int> started{0}; // connect attempts begun (atomic: tests wait for it)
    int discards = 0;            // closes of connections given up on inside an acquire (counted in closes too)
    int cancelled = 0, abandoned_attempts = 0; // connect attempts given up, dropped after fork
    int in_flight = 0, max_in_flight = 0;      // connects under way at once (parked ones included)
    std::atomic<int> probes{0}, pings{0};
    int max_open_or_opening = 0; // the most connections open plus connects under way at any instant
    std::optional<chaos> random; // when set, faults are drawn at random (the queue comes first)
    std::mt19937_64 rng{1};

    // Under m.
    double draw() { return std::uniform_real_distribution<double>(0, 1)(rng); }
    template <class D>
    D draw_up_to(D most) {
        return D{std::uniform_int_distribution<typename D::rep>(0, std::max<typename D::rep>(most.count(), 0))(rng)};
    }
    int open_locked() const {
        int n = 0;
        for (auto& c : connections) n += !(c->closed || c->abandoned);
        return n;
    }
    std::atomic<std::uint64_t>* epoch = nullptr; // the pool's, when it bound it
    // The "server" failed over: as libpq_connector reports a FATAL 57P01 or a 25006.
    void signal_server_gone() {
        std::lock_guard lock(m);
        if (epoch) epoch->fetch_add(1, std::memory_order_relaxed);
    }
    void kill(fake_connection* c) {
        std::lock_guard lock(m);
        c->alive = false;
    }

    int open() {
        std::lock_guard lock(m);
        return open_locked();
    }
    fake_connection& connection(int id) {
        std::lock_guard lock(m);
        return *connections.at(static_cast<std::size_t>(id));
    }
    void fail_next(fault f, int times = 1) {
        std::lock_guard lock(m);
        for (int i = 0; i < times; ++i) faults.push_back(f);
    }
};

template <class Clock = std::chrono::steady_clock>
class fake_connector {
public:
    using category = connector_tag;
    using handle = fake_connection*;
    using clock = Clock;

    fake_connector() : server_(std::make_shared<fake_server>()) {}
    explicit fake_connector(std::shared_ptr<fake_server> s) : server_(std::move(s)) {}

    fake_server& server() const { return *server_; }

    // The pool hands over its invalidation epoch (and takes it back, null, when
    // it goes); the fake moves it on signal_server_gone().
    void bind_epoch(std::atomic<std::uint64_t>* epoch) noexcept {
        std::lock_guard lock(server_->m);
        if (epoch || server_->epoch == bound_) server_->epoch = epoch;
        bound_ = epoch;
    }

    // A connect in progress: its outcome is drawn when it starts (the next
    // queued fault), and it completes `connect_delay` later (real time).
    struct attempt {
        bool started = false;
        typename Clock::time_point ready_at{};
        fault outcome{};
    };

    handle continue_connect(attempt& a, typename Clock::time_point deadline) {
        if (!a.started) {
            std::lock_guard lock(server_->m);
            server_->max_in_flight = std::max(server_->max_in_flight, ++server_->in_flight);
            ++server_->started;
            server_->max_open_or_opening =
                std::max(server_->max_open_or_opening, server_->open_locked() + server_->in_flight);
            a.started = true;
            auto delay = std::chrono::duration_cast<typename Clock::duration>(server_->connect_delay);
            if (!server_->faults.empty()) {
                a.outcome = server_->faults.front();
                server_->faults.pop_front();
            } else if (server_->random) {
                const double x = server_->draw();
                if (x < server_->random->transient)
                    a.outcome = {fault::transient, "08001"};
                else if (x < server_->random->transient + server_->random->permanent)
                    a.outcome = {fault::permanent, "28P01"};
                delay += std::chrono::duration_cast<typename Clock::duration>(
                    server_->draw_up_to(server_->random->max_connect_delay));
                if (server_->draw() < server_->random->slow)
                    delay += std::chrono::duration_cast<typename Clock::duration>(server_->random->slow_delay);
            }
            a.ready_at = Clock::now() + delay;
        }
        if (Clock::now() < a.ready_at) {
            const auto until = std::min(a.ready_at, deadline);
            if constexpr (std::is_same_v<Clock, manual_clock>) {
                if (until > Clock::now()) Clock::sleep_for(until - Clock::now());
            } else {
                std::this_thread::sleep_until(until);
            }
            if (Clock::now() < a.ready_at) return nullptr; // the caller's deadline came first
        }
        const fault f = std::exchange(a, attempt{}).outcome;
        std::lock_guard lock(server_->m);
        --server_->in_flight;
        ++server_->attempts;
        switch (f.kind) {
        case fault::transient: throw connect_error("fake: server unreachable", f.sqlstate, true);
        case fault::permanent:
            throw connect_error("fake: authentication failed", f.sqlstate.empty() ? "28P01" : f.sqlstate, false);
        case fault::other: throw std::runtime_error("fake: connector threw something else");
        case fault::none: break;
        }
        ++server_->connects;
        auto c = std::make_unique<fake_connection>();
        c->id = static_cast<int>(server_->connections.size());
        server_->connections.push_back(std::move(c));
        return server_->connections.back().get();
    }
    void cancel_connect(attempt& a) noexcept {
        if (!std::exchange(a, attempt{}).started) return;
        std::lock_guard lock(server_->m);
        --server_->in_flight;
        ++server_->cancelled;
    }
    void abandon_connect(attempt& a) noexcept {
        if (!std::exchange(a, attempt{}).started) return;
        std::lock_guard lock(server_->m);
        --server_->in_flight;
        ++server_->abandoned_attempts;
    }
    void close(handle h) noexcept {
        if constexpr (!std::is_same_v<Clock, manual_clock>) {
            std::chrono::microseconds slow{0};
            {
                std::lock_guard lock(server_->m);
                if (server_->random && h->busy) slow = server_->draw_up_to(server_->random->max_busy_close);
            }
            if (slow.count() > 0) std::this_thread::sleep_for(slow); // as libpq_connector cancels a running query
        }
        std::lock_guard lock(server_->m);
        if (h->closed || h->abandoned) ++server_->misuse;
        h->closed = true;
        ++server_->closes;
    }
    // Never slow: a connection given up on inside an acquire is not busy.
    void discard(handle h) noexcept {
        std::lock_guard lock(server_->m);
        if (h->closed || h->abandoned) ++server_->misuse;
        h->closed = true;
        ++server_->closes;
        ++server_->discards;
    }
    void abandon(handle h) noexcept {
        std::lock_guard lock(server_->m);
        if (h->closed || h->abandoned) ++server_->misuse;
        h->abandoned = true;
        ++server_->abandons;
    }
    bool probe(handle h) noexcept {
        ++server_->probes;
        std::lock_guard lock(server_->m);
        if (h->closed || h->abandoned) ++server_->misuse;
        return h->alive;
    }
    bool broken(handle h) noexcept {
        std::lock_guard lock(server_->m);
        return !h->alive;
    }
    bool ping(handle h, typename Clock::time_point deadline) noexcept {
        ++server_->pings;
        if constexpr (!std::is_same_v<Clock, manual_clock>) {
            // A slow (or frozen) path: the answer takes ping_delay; the caller waits until its deadline at most.
            auto delay = std::chrono::duration_cast<std::chrono::microseconds>(server_->ping_delay);
            if (server_->random) {
                std::lock_guard lock(server_->m);
                delay += server_->draw_up_to(server_->random->max_ping_delay);
                if (server_->draw() < server_->random->slow) delay += server_->random->slow_delay;
            }
            if (delay.count() > 0) {
                const auto answer_at = Clock::now() + delay;
                std::this_thread::sleep_until(std::min(answer_at, deadline));
                if (Clock::now() < answer_at) return false;
            }
        }
        std::lock_guard lock(server_->m);
        if (h->closed || h->abandoned) ++server_->misuse;
        return h->alive && !h->silently_dead;
    }
    bool reset(handle h, bool) noexcept {
        std::lock_guard lock(server_->m);
        ++server_->resets;
        if (h->busy || !h->alive) return false;
        if (server_->random && server_->draw() < server_->random->reset_fails) return false;
        h->in_transaction = false;
        return true;
    }

private:
    std::shared_ptr<fake_server> server_;
    std::atomic<std::uint64_t>* bound_ = nullptr; // the epoch this copy bound, if any
};

static_assert(connector<fake_connector<>>);
static_assert(connector<fake_connector<manual_clock>>);

} // namespace pqpool::test
