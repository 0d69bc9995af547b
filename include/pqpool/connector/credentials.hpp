#pragma once

/// \file
/// What a credentials callable (`libpq_options::credentials`) is told and
/// gives back, and how what it gives is merged into a connect (pure
/// functions, unit-tested without a server).

#include <pqpool/detail/fork_gate.hpp>
#include <pqpool/detail/redact.hpp>

#include <algorithm>
#include <cstddef>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pqpool {

/// The host a connect is about to try, as a credentials callable sees it
/// (the views are valid during the call only).
struct connect_host {
    /// The host name (or Unix socket directory) as given; empty for libpq's
    /// default. With a `service`, or a single libpq connection, the whole list.
    std::string_view host{};
    std::string_view hostaddr{}; ///< The numeric address as given, or empty.
    std::string_view port{};     ///< As given, or empty (libpq's default: 5432).
    std::string_view dbname{};   ///< As libpq will use it (given, environment, or the user's name).
    std::string_view user{};     ///< As libpq will use it (given, environment, or the login name).
};

/// What a credentials callable supplies for one connect.
struct connect_credentials {
    /// The password for this connect; replaces the connection string's.
    /// Empty: none from here (the connection string's, or libpq's password
    /// file, as usual).
    std::string password{};
    /// Further connection parameters for this connect, as keyword and value
    /// (`{"user", "app_v2"}`, `{"sslpassword", …}`, `{"options", …}`); each
    /// replaces the connection string's. Not allowed: `host`, `hostaddr`,
    /// `port`, `service` and `target_session_attrs` (which hosts are tried,
    /// and how, is the connection string's business).
    std::vector<std::pair<std::string, std::string>> parameters{};
};

namespace detail {

// The secrets a credentials callable supplied lately, so that its own error
// messages (which may quote an old token) are scrubbed of them too. Its lock
// is only ever taken inside a fork gate step, so a fork never finds it held
// (a child would wait for it forever at its first connect).
class recent_secrets {
public:
    void add(const std::vector<std::string>& secrets) {
        const fork_gate::step gate;
        const std::lock_guard lock(m_);
        for (const std::string& s : secrets) {
            if (s.empty() || std::find(kept_.begin(), kept_.end(), s) != kept_.end()) continue;
            if (kept_.size() == capacity) kept_.erase(kept_.begin());
            kept_.push_back(s);
        }
    }
    void scrub(std::string& text) const {
        const fork_gate::step gate;
        const std::lock_guard lock(m_);
        scrub_tokens(text, kept_);
    }

private:
    static constexpr std::size_t capacity = 16;
    mutable std::mutex m_;
    std::vector<std::string> kept_;
};

// Merges what a credentials callable gave into one host's keywords and values:
// the password and each parameter replace the connection string's (or are
// added); the values of secret keywords are appended to `secrets`, to be
// scrubbed from messages. Returns why it is refused instead (a keyword that
// would change which hosts are tried, or a word that is no keyword), leaving
// the lists as they were.
inline std::optional<std::string> merge_credentials(const connect_credentials& c, const conninfo_vocabulary& vocab,
                                                    std::vector<std::string>& keywords,
                                                    std::vector<std::string>& values,
                                                    std::vector<std::string>& secrets) {
    for (const auto& [keyword, value] : c.parameters) {
        if (keyword == "host" || keyword == "hostaddr" || keyword == "port" || keyword == "service" ||
            keyword == "target_session_attrs")
            return "the credentials callable gave " + keyword +
                   ", which only the connection string may set (it decides which hosts are tried)";
        if (!vocab.is_keyword(keyword))
            return "the credentials callable gave \"" + keyword + "\", which is not a connection keyword";
    }
    auto set = [&](const std::string& keyword, const std::string& value) {
        const auto at = std::find(keywords.begin(), keywords.end(), keyword);
        if (at == keywords.end()) {
            keywords.push_back(keyword);
            values.push_back(value);
        } else {
            values[static_cast<std::size_t>(at - keywords.begin())] = value;
        }
        if (vocab.is_secret(keyword)) secrets.push_back(value);
    };
    if (!c.password.empty()) set("password", c.password);
    for (const auto& [keyword, value] : c.parameters) set(keyword, value);
    return std::nullopt;
}

} // namespace detail
} // namespace pqpool
