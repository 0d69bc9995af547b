#pragma once

/// \file
/// The `pqpool::connector` concept: what a pool needs from the thing that
/// opens, checks and closes connections.

#include <chrono>
#include <concepts>

namespace pqpool {

/// The category tag of connectors; a connector names it as `category`.
struct connector_tag {};

/// Opens, checks and closes connections of one server.
///
/// Minimal complete definition: `category` (= `connector_tag`), `handle`,
/// `clock`, and the members below. Laws:
/// - `connect(deadline)` returns an open handle or throws `pqpool::error`
///   (usually `connect_error`) no later than `deadline` plus the time to
///   notice it passed;
/// - `close(h)` ends the session politely (may write to the socket);
/// - `abandon(h)` frees `h` without one byte of I/O on its socket: it is the
///   only call allowed on a connection inherited across `fork()`;
/// - `probe(h)` answers "is `h` still usable?" with local checks only, no round
///   trip; `ping(h, deadline)` asks the server;
/// - `broken(h)` answers, from local state only, whether the session was lost
///   (libpq: `CONNECTION_BAD`);
/// - `reset(h, discard_all)` returns `h` to a clean idle state (rolls back an
///   open or failed transaction; with `discard_all`, `DISCARD ALL`) and answers
///   whether `h` may be reused; `false` means close it.
/// After `close` or `abandon`, `h` is never used again.
template <class C>
concept connector = requires(C& c, typename C::handle h, typename C::clock::time_point deadline) {
    requires std::same_as<typename C::category, connector_tag>;
    requires std::chrono::is_clock_v<typename C::clock>;
    { c.connect(deadline) } -> std::same_as<typename C::handle>;
    { c.close(h) } noexcept;
    { c.abandon(h) } noexcept;
    { c.probe(h) } noexcept -> std::same_as<bool>;
    { c.broken(h) } noexcept -> std::same_as<bool>;
    { c.ping(h, deadline) } noexcept -> std::same_as<bool>;
    { c.reset(h, true) } noexcept -> std::same_as<bool>;
};

} // namespace pqpool
