#pragma once

// A callable for observability::sink that keeps a copy of every event it gets,
// for tests to read back. Copies share the record (a test keeps one copy and
// passes another to the pool).

#include <pqpool/policies/observability.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace pqpool::test {

struct seen_event {
    event kind{};
    close_reason reason = close_reason::none;
    std::uint64_t connection = 0, uses = 0;
    bool has_handle = false;
    std::optional<std::chrono::nanoseconds> age, wait, hold, connect_time, backoff;
    std::string error, sqlstate;
    bool transient = false;
    std::string file; // of `where`, when set
    unsigned line = 0;
};

// Rare events only (what a sink gets by default), with connect times.
struct event_recorder {
    static constexpr bool times_connects = true;

    std::shared_ptr<std::mutex> m = std::make_shared<std::mutex>();
    std::shared_ptr<std::vector<seen_event>> log = std::make_shared<std::vector<seen_event>>();

    template <class Handle>
    void operator()(const event_info<Handle>& e) const noexcept {
        seen_event s;
        s.kind = e.kind;
        s.reason = e.reason;
        s.connection = e.connection;
        s.uses = e.uses;
        s.has_handle = e.handle != Handle{};
        s.age = e.age;
        s.wait = e.wait;
        s.hold = e.hold;
        s.connect_time = e.connect_time;
        s.backoff = e.backoff;
        s.error = std::string(e.error);
        s.sqlstate = std::string(e.sqlstate);
        s.transient = e.transient;
        if (e.where) {
            s.file = e.where->file_name();
            s.line = e.where->line();
        }
        std::lock_guard lock(*m);
        log->push_back(std::move(s));
    }

    std::vector<seen_event> events() const {
        std::lock_guard lock(*m);
        return *log;
    }
    std::vector<seen_event> of(event k) const {
        std::vector<seen_event> out;
        for (auto& e : events())
            if (e.kind == k) out.push_back(e);
        return out;
    }
    std::size_t count(event k) const { return of(k).size(); }
    void clear() const {
        std::lock_guard lock(*m);
        log->clear();
    }
};

// Every event, lease events with their wait and hold times included.
struct lease_recorder : event_recorder {
    static constexpr bool times_leases = true;
};

} // namespace pqpool::test
