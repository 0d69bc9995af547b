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
    bool busy = false;          // a query still running: reset must refuse
    bool closed = false;
    bool abandoned = false;
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
    std::deque<fault> faults; // consumed by connect attempts, in order
    std::chrono::milliseconds connect_delay{0}; // how long a connect takes (real time; manual time is advanced)
    std::chrono::milliseconds ping_delay{0};    // how long a ping's answer takes (real clock only)
    int connects = 0, attempts = 0, closes = 0, abandons = 0, resets = 0, misuse = 0;
    std::atomic<int> started{0}; // connect attempts begun (atomic: tests wait for it)
    int cancelled = 0, abandoned_attempts = 0; // connect attempts given up, dropped after fork
    int in_flight = 0, max_in_flight = 0; // connects under way at once (parked ones included)
    std::atomic<int> probes{0}, pings{0};

    int open() {
        std::lock_guard lock(m);
        int n = 0;
        for (auto& c : connections) n += !(c->closed || c->abandoned);
        return n;
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
            a.started = true;
            a.ready_at = Clock::now() + std::chrono::duration_cast<typename Clock::duration>(server_->connect_delay);
            if (!server_->faults.empty()) {
                a.outcome = server_->faults.front();
                server_->faults.pop_front();
            }
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
        std::lock_guard lock(server_->m);
        if (h->closed || h->abandoned) ++server_->misuse;
        h->closed = true;
        ++server_->closes;
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
            if (const auto delay = server_->ping_delay; delay.count() > 0) {
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
        h->in_transaction = false;
        return true;
    }

private:
    std::shared_ptr<fake_server> server_;
};

static_assert(connector<fake_connector<>>);
static_assert(connector<fake_connector<manual_clock>>);

} // namespace pqpool::test
