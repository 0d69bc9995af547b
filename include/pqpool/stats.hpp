#pragma once

/// \file
/// `pqpool::pool_stats`: a snapshot of a pool's counts.

#include <cstddef>
#include <cstdint>

namespace pqpool {

/// A pool's counts, all read under one lock, so `size == idle + in_use +
/// opening` holds in every snapshot.
struct pool_stats {
    std::size_t size = 0;     ///< Connections open or being opened.
    std::size_t idle = 0;     ///< Open and waiting in the pool.
    std::size_t in_use = 0;   ///< Held by leases.
    std::size_t opening = 0;  ///< Connects in progress.
    std::size_t overflow = 0; ///< How far `size` exceeds the overflow policy's kept size.
    std::size_t waiting = 0;  ///< Callers blocked in `acquire`.
    /// Invalidations so far: each time the pool learned that its server went
    /// away or changed role, every connection opened before was retired.
    std::uint64_t epoch = 0;

    friend bool operator==(const pool_stats&, const pool_stats&) = default;
};

/// What `pool.maintain()` did.
struct maintenance_report {
    std::size_t closed = 0; ///< Idle connections trimmed (idle too long) or retired (expired).
    std::size_t opened = 0; ///< Connections opened up to the recycling policy's floor.
};

} // namespace pqpool
