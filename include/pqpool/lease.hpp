#pragma once

/// \file
/// `pqpool::lease`: a connection borrowed from a pool; it returns itself.

#include <pqpool/error.hpp>

#include <utility>

namespace pqpool {

/// A connection borrowed from a pool, returned when the lease is destroyed,
/// moved-from leases hold nothing.
///
/// A lease may outlive its pool: the connection is then closed on return. A
/// lease held across `fork()` is poisoned in the child when the pool detects
/// forks: `get()` throws `closed_error` there and destruction does no I/O.
template <class Core>
class lease {
public:
    using handle = typename Core::handle;
    using info_type = typename Core::info;

    /// An empty lease.
    lease() noexcept = default;
    lease(const lease&) = delete;
    lease& operator=(const lease&) = delete;
    lease(lease&& other) noexcept
        : core_(std::exchange(other.core_, nullptr)),
          info_(std::exchange(other.info_, nullptr)),
          broken_(other.broken_) {}
    lease& operator=(lease&& other) noexcept {
        if (this != &other) {
            release();
            core_ = std::exchange(other.core_, nullptr);
            info_ = std::exchange(other.info_, nullptr);
            broken_ = other.broken_;
        }
        return *this;
    }
    ~lease() { release(); }

    /// The connection (a `PGconn*` for libpq); a null handle when empty.
    /// Throws `closed_error` in a child process for a lease taken before the fork.
    handle get() const {
        if constexpr (Core::fork_detects) {
            if (core_ && !core_->current(*info_)) [[unlikely]]
                throw closed_error("pqpool: this lease was taken before fork(); its connection belongs to the "
                                   "parent process and cannot be used in the child");
        }
        return core_ ? info_->handle : handle{};
    }

    /// True while the lease holds a connection.
    explicit operator bool() const noexcept { return core_ != nullptr; }

    /// Marks the connection unusable: on return the pool closes it instead of
    /// reusing it.
    void mark_broken() noexcept { broken_ = true; }

    /// Returns the connection to the pool now; the lease becomes empty.
    void release() noexcept {
        if (core_) std::exchange(core_, nullptr)->release(std::exchange(info_, nullptr), broken_);
    }

    /// What the pool knows of the connection (birth, expiry, uses).
    /// Precondition: the lease holds a connection.
    const info_type& info() const noexcept { return *info_; }

private:
    friend Core;
    lease(Core* core, info_type* info) noexcept : core_(core), info_(info) {}

    Core* core_ = nullptr;
    info_type* info_ = nullptr; // owned by the pool; valid while the lease holds it
    bool broken_ = false;
};

} // namespace pqpool
