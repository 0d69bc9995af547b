#pragma once

/// \file
/// The exceptions pqpool throws; every one derives from `pqpool::error`.
///
/// No message ever carries a password: messages name a server by host, port,
/// database and user only, and text from libpq is scrubbed of the password.

#include <pqpool/stats.hpp>

#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace pqpool {

/// The base of every exception pqpool throws.
class error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// Bad input: an unparsable conninfo, a missing certificate file, a policy
/// number out of range. Never retried.
class config_error : public error {
public:
    using error::error;
};

class connect_error;

/// `acquire` waited for its whole timeout and no connection became free.
/// When connects were failing during the wait, the message says so and
/// `last_connect_error()` holds the last failure (its SQLSTATE tells a wrong
/// password from an unreachable server).
class timeout_error : public error {
public:
    timeout_error(std::string what, pool_stats at_timeout, std::shared_ptr<const connect_error> cause = nullptr)
        : error(std::move(what)),
          stats_(at_timeout),
          cause_(std::move(cause)) {}
    /// The pool's counts at the moment the wait gave up.
    const pool_stats& stats() const noexcept { return stats_; }
    /// The last connect failure, when connects were failing; else null.
    const connect_error* last_connect_error() const noexcept { return cause_.get(); }

private:
    pool_stats stats_;
    std::shared_ptr<const connect_error> cause_;
};

/// No connection could be had without waiting and the policy forbids waiting
/// (`overflow::fail_fast`, a full waiter queue, or a `single_thread` pool).
class exhausted_error : public error {
public:
    exhausted_error(std::string what, pool_stats at_failure) : error(std::move(what)), stats_(at_failure) {}
    const pool_stats& stats() const noexcept { return stats_; }

private:
    pool_stats stats_;
};

/// The pool was closed (or destroyed) before or while the caller waited.
class closed_error : public error {
public:
    using error::error;
};

/// Opening a connection failed. Carries the server's SQLSTATE when the server
/// sent one (e.g. "28P01" for a wrong password) and whether the failure is
/// transient (worth retrying: unreachable server, class 08, 57P01/02/03/05,
/// 53300).
class connect_error : public error {
public:
    connect_error(std::string what, std::string sqlstate, bool transient)
        : error(std::move(what)),
          sqlstate_(std::move(sqlstate)),
          transient_(transient) {}
    /// Five characters, or empty when the server sent no SQLSTATE.
    const std::string& sqlstate() const noexcept { return sqlstate_; }
    /// True when a later attempt may succeed.
    bool transient() const noexcept { return transient_; }

private:
    std::string sqlstate_;
    bool transient_;
};

/// Is this SQLSTATE one that a retry on a fresh connection may cure?
/// Class 08 (connection exception), 57P01 (admin shutdown), 57P02 (crash
/// shutdown), 57P03 (cannot connect now), 57P05 (idle session timeout),
/// 53300 (too many connections).
constexpr bool is_transient_sqlstate(std::string_view s) noexcept {
    if (s.size() != 5) return false;
    if (s.substr(0, 2) == "08") return true;
    return s == "57P01" || s == "57P02" || s == "57P03" || s == "57P05" || s == "53300";
}

} // namespace pqpool
