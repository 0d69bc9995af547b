#pragma once

/// \file
/// What a pool tells its observability policy: the kind of each event, the
/// reason a connection was closed, and the context that comes with them.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#if __has_include(<source_location>)
#include <source_location>
#endif

namespace pqpool {

#if defined(__cpp_lib_source_location)
/// Where a call was made (`file_name()`, `line()`, `column()`, `function_name()`).
using source_location = std::source_location;
#else
/// Where a call was made: the members of `std::source_location`, for a
/// standard library that lacks it (libstdc++ 12 with clang 14, which has no
/// `__builtin_source_location`), from the builtins both compilers have.
class source_location {
public:
    /// The location of the call that evaluates it (in a default argument:
    /// the caller's).
    static constexpr source_location current(const char* file = __builtin_FILE(),
                                             const char* function = __builtin_FUNCTION(),
                                             std::uint_least32_t line = __builtin_LINE(),
                                             std::uint_least32_t column = __builtin_COLUMN()) noexcept {
        source_location l;
        l.file_ = file;
        l.function_ = function;
        l.line_ = line;
        l.column_ = column;
        return l;
    }
    constexpr source_location() noexcept = default;
    constexpr const char* file_name() const noexcept { return file_; }
    constexpr const char* function_name() const noexcept { return function_; }
    constexpr std::uint_least32_t line() const noexcept { return line_; }
    constexpr std::uint_least32_t column() const noexcept { return column_; }

private:
    const char* file_ = "";
    const char* function_ = "";
    std::uint_least32_t line_ = 0;
    std::uint_least32_t column_ = 0;
};
#endif

/// Something that happened in a pool.
enum class event : unsigned char {
    connected,         ///< A new connection was opened.
    connect_failed,    ///< An attempt to open one failed.
    retry,             ///< A failed attempt (or `run()`'s work on a lost connection) will be retried after a backoff.
    validation_failed, ///< An idle connection failed validation and was closed.
    retired,           ///< A connection was closed for a reason other than validation or surplus (see `close_reason`).
    trimmed,           ///< A returned (or newly opened) connection was closed because enough were idle (overflow).
    timeout,           ///< An acquire gave up waiting.
    exhausted,         ///< An acquire failed without waiting (fail_fast, waiter limit, single_thread).
    fork_detected,     ///< The pool found itself in a child process and abandoned inherited connections.
    acquired,          ///< A lease was handed out (only to a policy that asks for lease events).
    returned,          ///< A lease came back (only to a policy that asks for lease events).
    leak_suspected,    ///< A lease has been out longer than the leak threshold (`observability::leak_detection`).
    leak_returned,     ///< A lease reported as suspected leak came back after all.
};

/// How many kinds of `event` there are.
inline constexpr std::size_t event_count = 13;

/// Why a connection was closed.
enum class close_reason : unsigned char {
    none,         ///< The event closed no connection.
    lifetime,     ///< It reached its maximum lifetime (recycling).
    idle,         ///< It was idle too long (recycling).
    uses,         ///< It served its maximum number of leases (recycling).
    validation,   ///< It failed validation.
    broken,       ///< Its lease was marked broken (by the user, or by `run()` after the connection was lost).
    reset_failed, ///< Cleaning it on return failed (a command still running, a failed `ROLLBACK`).
    epoch,        ///< It was opened before an invalidation (the server went away or changed role).
    fork,         ///< It was inherited across `fork()` and abandoned without I/O.
    surplus,      ///< More were idle than the overflow policy keeps.
    pool_closed,  ///< The pool was closed or destroyed.
    recycled,     ///< A recycling policy that does not say why retired it.
};

/// How many kinds of `close_reason` there are.
inline constexpr std::size_t close_reason_count = 12;

/// The event's name as it appears in logs and metrics labels (`"connect_failed"`).
constexpr std::string_view to_string(event e) noexcept {
    constexpr std::string_view names[event_count] = {
        "connected", "connect_failed", "retry",    "validation_failed", "retired",        "trimmed",      "timeout",
        "exhausted", "fork_detected",  "acquired", "returned",          "leak_suspected", "leak_returned"};
    const auto i = static_cast<std::size_t>(e);
    return i < event_count ? names[i] : std::string_view("unknown");
}

/// The reason's name as it appears in logs and metrics labels (`"reset_failed"`).
constexpr std::string_view to_string(close_reason r) noexcept {
    constexpr std::string_view names[close_reason_count] = {"none",       "lifetime", "idle",         "uses",
                                                            "validation", "broken",   "reset_failed", "epoch",
                                                            "fork",       "surplus",  "pool_closed",  "recycled"};
    const auto i = static_cast<std::size_t>(r);
    return i < close_reason_count ? names[i] : std::string_view("unknown");
}

/// One event and what an operator needs to know about it. Every field but
/// `kind` is optional; which are filled depends on the kind:
///
/// | kind                 | fields                                                                   |
/// |----------------------|--------------------------------------------------------------------------|
/// | `connected`          | `connection`, `handle`, `connect_time`°                                  |
/// | `connect_failed`     | `error`, `sqlstate`, `transient`, `connect_time`°                        |
/// | `retry`              | `backoff`; `error`, `sqlstate` when a connect failed                     |
/// | `validation_failed`, `retired`, `trimmed` | `connection`, `uses`, `reason`, `age`°              |
/// | `timeout`            | `wait` (the wait that ended); `error`, `sqlstate` when connects were failing |
/// | `exhausted`          | nothing more                                                             |
/// | `fork_detected`      | nothing more (each abandoned connection follows as `retired`, `fork`)    |
/// | `acquired`           | `connection`, `uses`, `wait`†, `age`†, `where`‡                          |
/// | `returned`           | `connection`, `uses`, `hold`†, `age`†, `where`‡                          |
/// | `leak_suspected`, `leak_returned` | `connection`, `uses`, `hold` (how long it has been out), `where` |
///
/// ° when the policy asks for connect times (`times_connects`); † when it asks
/// for lease times (`times_leases`); ‡ when the pool tracks leaks.
///
/// Everything the event points to (`error`, `where`, `handle`) is valid only
/// during the call. No text in it ever holds a password: errors come from the
/// connector, which scrubs them.
template <class Handle>
struct event_info {
    event kind{};
    close_reason reason = close_reason::none;
    /// The connection concerned: its id (1, 2, … in the order the pool
    /// opened them); 0 when the event concerns none.
    std::uint64_t connection = 0;
    /// How many leases have held that connection so far.
    std::uint64_t uses = 0;
    /// `connected` only: the new connection, before anyone else has it. An
    /// observer may read local state from it (TLS facts, the server version)
    /// but must not do I/O on it.
    Handle handle{};
    std::optional<std::chrono::nanoseconds> age;          ///< Since the connection was opened.
    std::optional<std::chrono::nanoseconds> wait;         ///< How long the acquire took (or waited, for a timeout).
    std::optional<std::chrono::nanoseconds> hold;         ///< How long the lease was (or has been) out.
    std::optional<std::chrono::nanoseconds> connect_time; ///< How long the connect attempt took, parked time included.
    std::optional<std::chrono::nanoseconds> backoff;      ///< The delay before the next attempt.
    std::string_view error;                               ///< The failure's message (password scrubbed).
    std::string_view sqlstate;                            ///< Five characters, or empty when the server sent none.
    bool transient = false;                               ///< `connect_failed`: a retry may succeed.
    /// Where the lease was acquired (`acquire()`'s caller), when the pool tracks leaks.
    const source_location* where = nullptr;
};

} // namespace pqpool
