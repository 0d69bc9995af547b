#pragma once

/// \file
/// `pqpool::connection_info`: what a pool knows about one of its connections.

#include <cstdint>

namespace pqpool {

/// One connection and its history, as policies see it.
///
/// The time fields are filled only when a policy of the pool reads the clock
/// (`uses_clock`); otherwise they stay default-constructed and no clock is
/// read on acquire or release.
template <class Handle, class TimePoint>
struct connection_info {
    Handle handle{};
    TimePoint born{};             ///< When the connection was opened.
    TimePoint expires{};          ///< When recycling retires it (drawn once, at birth).
    TimePoint last_used{};        ///< When it was last returned to the pool.
    std::uint64_t uses = 0;       ///< How many leases have held it, this one included.
    std::uint64_t generation = 0; ///< The fork generation it was opened in.
    std::uint64_t epoch = 0;      ///< The pool's invalidation epoch when it was opened.
    std::uint64_t id = 0;         ///< The pool's number for it: 1, 2, … in the order opened (as in events).
};

} // namespace pqpool
