// Credentials per connect against a real PostgreSQL: the password comes from
// libpq_options::credentials, asked for each new connection; a password that
// rotates every second under a churning pool costs no operation (the role
// pqpool_rotating, SCRAM-authenticated in the sandbox's pg_hba.conf).
// PQPOOL_ROTATION_SECONDS sets the rotation test's length (20 s in CI).

#include "catch.hpp"
#include "pg.hpp"
#include "sandbox.hpp"

#include <pqpool/pqpool.hpp>

#include <libpq-fe.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace pqpool;
using namespace std::chrono_literals;
using test::admin;
using test::query;
using test::sandbox;

namespace {

const std::string role = "pqpool_rotating";

std::string random_password() {
    static std::mt19937_64 rng{std::random_device{}()};
    static constexpr char chars[] = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    std::string out = "Zr-";
    for (int i = 0; i < 24; ++i) out += chars[rng() % (sizeof chars - 1)];
    return out;
}

// The role with a password (the sandbox's pg_hba.conf asks it for SCRAM over TCP).
void set_password(admin& a, const std::string& password) {
    query(a.c, "SET password_encryption = 'scram-sha-256'");
    query(a.c, "DO $$ BEGIN CREATE ROLE " + role + " LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$");
    query(a.c, "ALTER ROLE " + role + " PASSWORD '" + password + "'");
}

// The connection string, without a password: the callable gives it.
std::string role_conninfo() {
    const sandbox& s = sandbox::get();
    return "host=" + s.var("PQPOOL_TEST_HOST") + " port=" + s.var("PQPOOL_TEST_PORT") +
           " dbname=" + s.var("PQPOOL_TEST_DBNAME") + " user=" + role + " sslmode=require passfile=/nonexistent/pgpass";
}

// The secret store a real program would ask (a vault, a file a sidecar rewrites).
struct secret_store {
    std::mutex m;
    std::string current;
    std::vector<std::string> all; // every password it ever held, to look for in messages and logs
    int asked = 0;

    void set(const std::string& pw) {
        const std::lock_guard lock(m);
        current = pw;
        all.push_back(pw);
    }
    connect_credentials get() {
        const std::lock_guard lock(m);
        ++asked;
        return {.password = current};
    }
};

std::string server_log() {
    std::ifstream in(sandbox::get().var("PQPOOL_TEST_LOG"));
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::size_t count_of(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
}

} // namespace

TEST_CASE("credentials: the password is asked for each new connection and the connections opened before stay",
          "[integration][credentials]") {
    admin adm;
    secret_store store;
    store.set(random_password());
    set_password(adm, store.current);
    pool<validation::none, recycling::none, overflow::fixed, observability::counters> p{
        libpq_connector{role_conninfo(), {.credentials = [&](const connect_host&) { return store.get(); }}},
        overflow::fixed{.size = 2, .wait = 10s}};
    auto first = p.acquire();
    CHECK(query(first.get(), "SELECT current_user") == role);
    CHECK(store.asked == 1);
    store.set(random_password());
    set_password(adm, store.current);
    auto second = p.acquire(); // a new connection: the new password
    CHECK(store.asked == 2);
    CHECK(query(second.get(), "SELECT 1") == "1");
    CHECK(query(first.get(), "SELECT 1") == "1"); // the old one is untouched
    CHECK(p.observer().count(event::connect_failed) == 0);
}

TEST_CASE("credentials: a password the server refuses right after a rotation is asked for again, not failed",
          "[integration][credentials]") {
    admin adm;
    const std::string right = random_password(), stale = random_password();
    set_password(adm, right);
    int asked = 0;
    pool<validation::none, recycling::none, overflow::fixed, observability::counters> p{
        libpq_connector{
            role_conninfo(),
            {.credentials =
                 [&](const connect_host&) { return connect_credentials{.password = ++asked == 1 ? stale : right}; }}},
        overflow::fixed{.size = 1, .wait = 10s}, retry::exponential_backoff{.attempts = 3, .base = 10ms, .cap = 50ms}};
    auto l = p.acquire();
    CHECK(query(l.get(), "SELECT current_user") == role);
    CHECK(asked == 2);
    CHECK(p.observer().count(event::connect_failed) == 1);

    // A password that stays wrong is still an error, after the retry budget, naming why and no secret.
    libpq_connector wrong{role_conninfo(),
                          {.credentials = [&](const connect_host&) { return connect_credentials{.password = stale}; }}};
    try {
        wrong.connect(libpq_connector::clock::now() + 10s);
        FAIL("connected with a wrong password");
    } catch (const connect_error& e) {
        const std::string msg = e.what();
        CAPTURE(msg);
        CHECK(e.sqlstate() == "28P01");
        CHECK(e.transient());
        CHECK_THAT(msg, Catch::Contains("the password came from libpq_options::credentials"));
        CHECK(msg.find(stale) == std::string::npos);
        CHECK(msg.find(right) == std::string::npos);
    }
}

TEST_CASE("credentials: a password rotated every second under a churning pool costs no operation",
          "[integration][credentials][rotation]") {
    const char* env = std::getenv("PQPOOL_ROTATION_SECONDS");
    const auto length = std::chrono::seconds{env && *env ? std::atoi(env) : 20};
    admin adm;
    secret_store store;
    store.set(random_password());
    set_password(adm, store.current);
    const std::size_t log_start = server_log().size();

    using churn_pool = pool<validation::probe, recycling::limits, overflow::bounded, observability::counters>;
    const libpq_connector connector{role_conninfo(), {.credentials = [&](const connect_host&) { return store.get(); }}};
    // Connections that live about half a second: a connect every few tens of milliseconds.
    churn_pool p{connector, recycling::limits{.max_lifetime = 500ms, .jitter = 250ms},
                 overflow::bounded{.size = 4, .max_overflow = 4, .wait = 10s},
                 retry::exponential_backoff{.attempts = 8, .base = 20ms, .cap = 200ms}};
    // And a connection per operation (as behind PgBouncer, or in a short-lived process): no
    // connection can come back to a caller whose connect was refused, so only asking the store
    // again saves the operation.
    pool<validation::none, recycling::none, overflow::pass_through, observability::counters> direct{
        connector, retry::exponential_backoff{.attempts = 8, .base = 20ms, .cap = 200ms}};
    // Two connections opened with the first password, held all along.
    pool<validation::none, recycling::none, overflow::fixed> old_pool{connector, overflow::fixed{.size = 2}};
    auto old_a = old_pool.acquire(), old_b = old_pool.acquire();

    std::atomic<bool> stop{false};
    std::atomic<long> operations{0};
    std::mutex failures_m;
    std::vector<std::string> failures;
    std::vector<std::thread> workers;
    for (int t = 0; t < 8; ++t)
        workers.emplace_back([&] {
            while (!stop.load()) {
                try {
                    p.run([](PGconn* c) { return query(c, "SELECT 1"); });
                    ++operations;
                } catch (const std::exception& e) {
                    const std::lock_guard lock(failures_m);
                    failures.emplace_back(e.what());
                }
            }
        });
    std::atomic<long> direct_operations{0};
    workers.emplace_back([&] {
        while (!stop.load()) {
            try {
                direct.run([](PGconn* c) { return query(c, "SELECT 1"); });
                ++direct_operations;
            } catch (const std::exception& e) {
                const std::lock_guard lock(failures_m);
                failures.emplace_back(e.what());
            }
        }
    });
    int rotations = 0;
    const auto end = std::chrono::steady_clock::now() + length;
    while (std::chrono::steady_clock::now() < end) {
        std::this_thread::sleep_for(1s);
        const std::string next = random_password();
        query(adm.c, "ALTER ROLE " + role + " PASSWORD '" + next + "'"); // the server first, then the store,
        store.set(next);                                                 // as a rotation does it
        ++rotations;
    }
    stop = true;
    for (auto& w : workers) w.join();

    const std::string log = server_log().substr(log_start);
    const std::size_t refused = count_of(log, "password authentication failed for user \"" + role + "\"");
    const std::uint64_t connects = p.observer().count(event::connected) + direct.observer().count(event::connected);
    const std::uint64_t connect_failures =
        p.observer().count(event::connect_failed) + direct.observer().count(event::connect_failed);
    INFO(operations << " + " << direct_operations << " operations, " << connects << " connects, " << rotations
                    << " rotations, " << refused << " connects refused by the server in a rotation's window "
                    << "(each asked the store again)");
    CHECK(failures.empty());
    for (const std::string& f : failures) INFO(f);
    CHECK(rotations >= static_cast<int>(length.count()) - 2);
    // Churned: about 25 connects a second here, 5 under ThreadSanitizer on two busy cores; 2 is the floor.
    CHECK(p.observer().count(event::connected) >= 2 * static_cast<std::uint64_t>(length.count()));
    CHECK(operations > 0);
    CHECK(direct_operations >= length.count()); // it did connect again and again
    // The connections of the first password still work.
    CHECK(query(old_a.get(), "SELECT 1") == "1");
    CHECK(query(old_b.get(), "SELECT 1") == "1");
    // No password in any message, nor in the server's log.
    for (const std::string& pw : store.all) {
        for (const std::string& f : failures) CHECK(f.find(pw) == std::string::npos);
        CHECK(log.find(pw) == std::string::npos);
    }
    CHECK(refused == connect_failures); // every refusal was a retried connect, none an operation
}
