#pragma once

// A connector whose operations cost (almost) nothing, so a benchmark measures
// the pool and not the connector.

#include <pqpool/connector/concept.hpp>

#include <chrono>

namespace pqpool::bench {

struct null_connection {
    int id = 0;
};

struct null_connector {
    using category = connector_tag;
    using handle = null_connection*;
    using clock = std::chrono::steady_clock;
    struct attempt {};
    handle continue_connect(attempt&, clock::time_point) { return new null_connection{}; }
    void cancel_connect(attempt&) noexcept {}
    void abandon_connect(attempt&) noexcept {}
    void close(handle h) noexcept { delete h; }
    void discard(handle h) noexcept { delete h; }
    void abandon(handle h) noexcept { delete h; }
    bool probe(handle h) noexcept { return h != nullptr; }
    bool broken(handle h) noexcept { return h == nullptr; }
    bool ping(handle h, clock::time_point) noexcept { return h != nullptr; }
    bool reset(handle h, bool) noexcept { return h != nullptr; }
};

} // namespace pqpool::bench
