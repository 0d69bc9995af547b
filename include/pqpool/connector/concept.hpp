#pragma once

/// \file
/// The `pqpool::connector` concept: what a pool needs from the thing that
/// opens, checks and closes connections.

#include <chrono>
#include <concepts>

namespace pqpool {

/// The category tag of connectors; a connector names it as `category`.
struct connector_tag {};

/// Opens, checks and closes connections of one server (or one list of hosts).
///
/// Minimal complete definition: `category` (= `connector_tag`), `handle` (a
/// nullable value: `handle{}` is "no connection"), `clock`, `attempt`, and the
/// members below.
///
/// Connecting is resumable, so that a caller with a short wait never has to
/// throw a half-done handshake away: an `attempt` carries a connect in
/// progress and may be continued later, by another thread.
/// - `continue_connect(a, deadline)` starts `a` if it is empty, then drives it
///   until it is done (returns the open handle; `a` is empty again), until
///   `deadline` passes (returns `handle{}`; `a` keeps its progress), or until
///   it fails (throws `connect_error`, usually; `a` is empty again). It never
///   waits past `deadline` plus the time to notice it passed (and one
///   non-blocking step); a deadline already passed still makes the progress
///   that needs no waiting. The attempt enforces the connector's own timeouts
///   (e.g. a connect timeout per host) whatever the deadline, so a large
///   deadline means "to the end of the attempt", never "forever".
/// - `cancel_connect(a)` gives an attempt up (may write to its socket); `a`
///   is empty afterwards. An empty `a` is ignored.
/// - `abandon_connect(a)` frees an attempt without one byte of I/O: the only
///   call allowed on an attempt inherited across `fork()`.
///
/// And for open connections:
/// - `close(h)` ends the session politely (may write to the socket; a command
///   still running is cancelled first, within a bounded time);
/// - `discard(h)` ends a session the pool gave up on inside an acquire (it
///   failed validation, or expired): like `close` but it never waits, so the
///   acquire keeps its bound (a validation round trip cut short leaves only
///   its own empty query running, which needs no cancel);
/// - `abandon(h)` frees `h` without one byte of I/O on its socket: it is the
///   only call allowed on a connection inherited across `fork()`;
/// - `probe(h)` answers "is `h` still usable?" with local checks only, no round
///   trip; `ping(h, deadline)` asks the server and never waits past `deadline`;
/// - `broken(h)` answers, from local state only, whether the session was lost
///   (libpq: `CONNECTION_BAD`);
/// - `reset(h, discard_all)` returns `h` to a clean idle state (rolls back an
///   open or failed transaction; with `discard_all`, `DISCARD ALL`) and answers
///   whether `h` may be reused; `false` means close it.
///
/// Optional, for a connector that watches its connections: `bind_epoch(e)`
/// (the pool hands over its invalidation epoch, a `std::atomic<std::uint64_t>*`,
/// when it is built, and null when it goes; the connector moves it, from any
/// thread, when a connection sees its server go away or change role) and
/// `birth_epoch(h)` (the epoch a connection just opened reports against; the
/// pool records the same). Without them the pool reads its epoch itself.
///
/// After `close` or `abandon`, `h` is never used again. One attempt and one
/// handle are used by one thread at a time; different ones, concurrently.
template <class C>
concept connector = std::default_initializable<typename C::attempt> && std::movable<typename C::attempt> &&
    requires(C& c, typename C::handle h, typename C::attempt& a, typename C::clock::time_point deadline) {
    requires std::same_as<typename C::category, connector_tag>;
    requires std::chrono::is_clock_v<typename C::clock>;
    { c.continue_connect(a, deadline) } -> std::same_as<typename C::handle>;
    { c.cancel_connect(a) }
    noexcept;
    { c.abandon_connect(a) }
    noexcept;
    { c.close(h) }
    noexcept;
    { c.discard(h) }
    noexcept;
    { c.abandon(h) }
    noexcept;
    { c.probe(h) }
    noexcept->std::same_as<bool>;
    { c.broken(h) }
    noexcept->std::same_as<bool>;
    { c.ping(h, deadline) }
    noexcept->std::same_as<bool>;
    { c.reset(h, true) }
    noexcept->std::same_as<bool>;
};

} // namespace pqpool
