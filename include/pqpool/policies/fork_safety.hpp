#pragma once

/// \file
/// Fork safety: what a child process does with connections it inherited.
///
/// | policy   | cost per acquire           |
/// |----------|----------------------------|
/// | `none`   | nothing                    |
/// | `detect` | one relaxed atomic load (default) |
/// | `check_pid` | one `getpid()` syscall (tens of ns; more on a VM) |
///
/// With `detect`, a `pthread_atfork` child handler bumps a process-wide
/// generation. A pool that sees a new generation *abandons* every connection
/// it inherited: an fd of `/dev/null` is `dup2`ed over the socket, then the
/// connection is freed, so not one byte (no Terminate message, no TLS
/// close_notify) reaches the parent's session. The child's pool starts afresh,
/// a lease held across the fork fails on use in the child and does no I/O when
/// destroyed, and the parent's pool is untouched. A child made by `vfork` or a
/// raw `clone` runs no atfork handler and is not detected by `detect`; use
/// `check_pid` there.

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <concepts>
#include <cstdint>

namespace pqpool {

/// The category tag of fork-safety policies.
struct fork_safety_tag {};

/// A fork-safety policy.
///
/// Minimal complete definition: `category` (= `fork_safety_tag`),
/// `static constexpr bool detects`, and `std::uint64_t generation() const
/// noexcept`. Laws: `generation()` changes in a child process after `fork()`
/// and nowhere else; when `detects` is false it is constant.
template <class P>
concept fork_safety_policy = std::same_as<typename P::category, fork_safety_tag> && std::default_initializable<P> &&
    requires(const P& p) {
    { P::detects } -> std::convertible_to<bool>;
    { p.generation() }
    noexcept->std::same_as<std::uint64_t>;
};

namespace detail {

// An inline variable rather than a function-local static: reading it must not
// pay for a guard check on every acquire.
inline std::atomic<std::uint64_t> fork_generation{0};

inline void bump_fork_generation() noexcept { fork_generation.fetch_add(1, std::memory_order_relaxed); }

inline void install_fork_handler() noexcept {
    static const bool installed = [] { return ::pthread_atfork(nullptr, nullptr, &bump_fork_generation) == 0; }();
    (void)installed;
}

} // namespace detail

namespace fork_safety {

/// The program promises not to fork while a pool holds connections (or never
/// to use the pool in a child). Costs nothing.
struct none {
    using category = fork_safety_tag;
    static constexpr bool detects = false;
    static constexpr std::uint64_t generation() noexcept { return 0; }
};

/// Detects `fork()` with a `pthread_atfork` handler; a child abandons the
/// inherited connections without I/O. Costs one relaxed atomic load per
/// acquire and release. The default.
struct detect {
    using category = fork_safety_tag;
    static constexpr bool detects = true;
    detect() noexcept { detail::install_fork_handler(); }
    std::uint64_t generation() const noexcept { return detail::fork_generation.load(std::memory_order_relaxed); }
};

/// Detects a new process by its pid, for code that creates processes without
/// running `pthread_atfork` handlers (a raw `clone`, some sandboxes). Costs one
/// `getpid()` syscall per acquire, release and `lease::get()` (glibc no longer
/// caches the pid): prefer `detect` where `fork()` is used.
struct check_pid {
    using category = fork_safety_tag;
    static constexpr bool detects = true;
    std::uint64_t generation() const noexcept { return static_cast<std::uint64_t>(::getpid()); }
};

/// What `pqpool::pool<>` uses when no fork-safety policy is named.
using default_policy = detect;

} // namespace fork_safety
} // namespace pqpool
