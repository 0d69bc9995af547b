#pragma once

/// \file
/// `pqpool::rds_iam_auth`: AWS RDS IAM authentication tokens as the password
/// of each connect, for `libpq_options::credentials`.
///
/// ```cpp
/// #include <pqpool/connector/rds_iam.hpp>
///
/// pqpool::pool<> pool{pqpool::libpq_connector{
///     "host=mydb.abc.eu-west-1.rds.amazonaws.com port=5432 dbname=app user=iam_app "
///     "sslmode=verify-full sslrootcert=/etc/ssl/rds/global-bundle.pem",
///     {.credentials = pqpool::rds_iam_auth{{.access_key_id = key, .secret_access_key = secret},
///                                          "eu-west-1"}}}};
/// ```
///
/// RDS accepts the token as a password over TLS only: use
/// `sslmode=verify-full` with AWS's RDS root certificate bundle as
/// `sslrootcert` (checked when the connector is built), so that the token
/// goes to the real server. The database user needs `GRANT rds_iam`.
///
/// Needs OpenSSL (HMAC-SHA256 and SHA-256); link `OpenSSL::Crypto`.

#include <pqpool/connector/libpq.hpp>
#include <pqpool/detail/fork_gate.hpp>
#include <pqpool/detail/sigv4.hpp>
#include <pqpool/error.hpp>

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pqpool {

/// AWS credentials to sign with.
struct aws_credentials {
    std::string access_key_id;
    std::string secret_access_key;
    std::string session_token{}; ///< Empty for long-term keys; STS's for temporary ones.

    friend bool operator==(const aws_credentials&, const aws_credentials&) = default;
};

/// How long an RDS IAM token is valid (AWS's limit).
inline constexpr std::chrono::minutes rds_iam_token_lifetime{15};

/// The RDS IAM authentication token for `user` at `host:port` in `region`,
/// signed at `now`: a Signature Version 4 presigned `rds-db:connect` request,
/// `host:port/?Action=connect&DBUser=…&X-Amz-…&X-Amz-Signature=…`, valid for
/// 15 minutes. The same bytes as botocore's `generate_db_auth_token`. No I/O.
/// Throws `config_error` for an empty host, user, region or key.
inline std::string rds_iam_token(const aws_credentials& credentials, std::string_view region, std::string_view host,
                                 unsigned port, std::string_view user, std::chrono::system_clock::time_point now) {
    namespace s4 = detail::sigv4;
    if (host.empty() || user.empty() || region.empty() || credentials.access_key_id.empty() ||
        credentials.secret_access_key.empty())
        throw config_error("pqpool: an RDS IAM token needs a host name, a user, a region and an AWS access key "
                           "(one of them is empty)");
    const std::string amz_date = s4::amz_date(now);
    const std::string date = amz_date.substr(0, 8);
    const std::string scope = date + "/" + std::string(region) + "/rds-db/aws4_request";
    const std::string port_text = std::to_string(port);

    // The query: operation parameters, then the authentication ones, in
    // botocore's order; the canonical form sorts them (the keys are fixed, so
    // their sorted order is known).
    struct param {
        std::string_view key;
        std::string value; // encoded
    };
    std::vector<param> query = {
        {"Action", "connect"},
        {"DBUser", s4::uri_encode(user)},
        {"X-Amz-Algorithm", "AWS4-HMAC-SHA256"},
        {"X-Amz-Credential", s4::uri_encode(credentials.access_key_id + "/" + scope)},
        {"X-Amz-Date", amz_date},
        {"X-Amz-Expires", std::to_string(std::chrono::seconds{rds_iam_token_lifetime}.count())},
        {"X-Amz-SignedHeaders", "host"},
    };
    if (!credentials.session_token.empty())
        query.push_back({"X-Amz-Security-Token", s4::uri_encode(credentials.session_token)});
    std::vector<const param*> sorted;
    for (const param& p : query) sorted.push_back(&p);
    std::sort(sorted.begin(), sorted.end(), [](const param* a, const param* b) { return a->key < b->key; });
    std::string canonical_query, url_query;
    for (const param* p : sorted) {
        if (!canonical_query.empty()) canonical_query += '&';
        canonical_query.append(p->key).append("=").append(p->value);
    }
    for (const param& p : query) {
        if (!url_query.empty()) url_query += '&';
        url_query.append(p.key).append("=").append(p.value);
    }

    // The Host header as an HTTPS client sends it: the name in lower case, the
    // port unless it is HTTPS's own.
    std::string host_header(host);
    for (char& c : host_header)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (port != 443) host_header += ":" + port_text;

    const std::string canonical_request =
        "GET\n/\n" + canonical_query + "\nhost:" + host_header + "\n\nhost\n" + s4::hex(s4::sha256(""));
    const std::string signature =
        s4::hex(s4::hmac_sha256(s4::signing_key(credentials.secret_access_key, date, region, "rds-db"),
                                s4::string_to_sign(amz_date, scope, canonical_request)));
    return std::string(host) + ":" + port_text + "/?" + url_query + "&X-Amz-Signature=" + signature;
}

/// The run-time settings of an `rds_iam_auth`.
struct rds_iam_options {
    /// Sign a new token once the cached one is this old. Must be positive and
    /// below the token's 15 minutes.
    std::chrono::seconds refresh_after{std::chrono::minutes{10}};
    /// The clock tokens are dated by (tests freeze it).
    std::function<std::chrono::system_clock::time_point()> now = [] { return std::chrono::system_clock::now(); };
};

/// A `libpq_options::credentials` callable that gives each connect an RDS IAM
/// token as its password: one token per host, port and user, cached and
/// signed anew once it is `refresh_after` old (10 minutes by default, 5
/// before it expires) or when the credentials it was signed with changed.
/// Copies share the cache; thread-safe. The cache's lock is held only to look
/// a token up and to sign one (microseconds, no I/O), never while the
/// credentials source runs, so connects that share an `rds_iam_auth` (several
/// pools, several hosts) do not wait for one another's source. Fork-safe: the
/// lock and OpenSSL's (signing) are taken inside the connector's fork gate, so
/// a child never inherits them held.
class rds_iam_auth {
public:
    /// Where the AWS credentials come from: called at each call (each connect),
    /// outside the cache's lock, so that rotating credentials (an instance
    /// role's, STS's) are picked up; a token signed with other credentials is
    /// signed anew. Several connects may call it at once. Its time counts
    /// against the connect's caller like any credentials callable's: cache
    /// what is slow to fetch.
    using credentials_source = std::function<aws_credentials()>;
    using options = rds_iam_options;

    /// Fixed credentials. Throws `config_error` for an empty region or key,
    /// or a `refresh_after` out of range.
    rds_iam_auth(aws_credentials credentials, std::string region, options o = options())
        : rds_iam_auth([c = std::move(credentials)] { return c; }, std::move(region), std::move(o)) {
        const aws_credentials c = state_->source(); // an empty key is refused now, not at the first connect
        if (c.access_key_id.empty() || c.secret_access_key.empty())
            throw config_error("pqpool: rds_iam_auth: the AWS access key id or secret access key is empty");
    }

    /// Credentials from `source`, asked again for each new token.
    rds_iam_auth(credentials_source source, std::string region, options o = options())
        : state_(std::make_shared<state>()) {
        if (region.empty()) throw config_error("pqpool: rds_iam_auth: the AWS region is empty");
        if (o.refresh_after.count() <= 0 || o.refresh_after >= rds_iam_token_lifetime)
            throw config_error("pqpool: rds_iam_auth: refresh_after is " + std::to_string(o.refresh_after.count()) +
                               " s; it must be more than 0 and less than the token's 900 s");
        if (!source || !o.now) throw config_error("pqpool: rds_iam_auth: the credentials source or clock is empty");
        detail::fork_gate::install();
        state_->source = std::move(source);
        state_->region = std::move(region);
        state_->opts = std::move(o);
    }

    /// The token for the host about to be tried, as its password. Throws
    /// `config_error` when the host is not a single host name (a Unix socket,
    /// a service file's list) or there is no user, and what the credentials
    /// source throws (the connect then fails with its message).
    connect_credentials operator()(const connect_host& h) const {
        if (h.host.empty() || h.host.front() == '/' || h.host.find(',') != std::string_view::npos)
            throw config_error("pqpool: rds_iam_auth needs one host name per connect (give host= the RDS "
                               "endpoint; not a socket directory or a service)");
        unsigned port = 5432;
        if (!h.port.empty()) port = static_cast<unsigned>(std::stoul(std::string(h.port)));
        const std::string key = std::string(h.host) + '\n' + std::to_string(port) + '\n' + std::string(h.user);
        // The source may be slow (an instance role's credentials: an HTTP
        // request): never under the cache's lock.
        const aws_credentials creds = state_->source();
        const auto now = state_->opts.now();
        // OpenSSL's locks (signing) and the cache's: never held at a fork.
        const detail::fork_gate::step gate;
        const std::lock_guard lock(state_->m);
        auto it = state_->cache.find(key);
        const bool fresh = it != state_->cache.end() && it->second.signed_with == creds && now >= it->second.at &&
                           now - it->second.at < state_->opts.refresh_after;
        if (!fresh) {
            cached c{rds_iam_token(creds, state_->region, h.host, port, h.user, now), now, creds};
            it = state_->cache.insert_or_assign(key, std::move(c)).first;
        }
        return {.password = it->second.token};
    }

private:
    struct cached {
        std::string token;
        std::chrono::system_clock::time_point at;
        aws_credentials signed_with;
    };
    struct state {
        std::mutex m;
        credentials_source source;
        std::string region;
        options opts;
        std::map<std::string, cached> cache;
    };
    std::shared_ptr<state> state_;
};

} // namespace pqpool
