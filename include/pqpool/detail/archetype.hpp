#pragma once

// The smallest connector and connection record that the category concepts are
// checked against: a policy's members are templates over the connector, so a
// concept can only ask "does this compile with *a* connector?".

#include <pqpool/connection_info.hpp>
#include <pqpool/connector/concept.hpp>

#include <chrono>

namespace pqpool::detail {

struct archetype_connector {
    using category = connector_tag;
    struct connection;
    using handle = connection*;
    using clock = std::chrono::steady_clock;
    struct attempt {};
    handle continue_connect(attempt&, clock::time_point);
    void cancel_connect(attempt&) noexcept;
    void abandon_connect(attempt&) noexcept;
    void close(handle) noexcept;
    void discard(handle) noexcept;
    void abandon(handle) noexcept;
    bool probe(handle) noexcept;
    bool broken(handle) noexcept;
    bool ping(handle, clock::time_point) noexcept;
    bool reset(handle, bool) noexcept;
};

using archetype_info = connection_info<archetype_connector::handle, archetype_connector::clock::time_point>;

} // namespace pqpool::detail
