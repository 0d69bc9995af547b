// Validation and recycling against a real PostgreSQL that drops connections.
//
// Each scenario disrupts a pool's idle connections the way a server does in
// production: (a) it terminates the backends (pg_terminate_backend, FATAL
// 57P01), (b) it closes idle sessions itself (idle_session_timeout, FATAL
// 57P05), (c) it restarts, or (d) a lease comes back inside a transaction.
// Every validating policy (probe, ping, ping_if_idle) runs each scenario over
// TLS and over plain TCP, and beside it, in the same disruption, a control pool
// with validation::none must fail: otherwise the test would prove nothing.
//
// Only the policy under test may heal. The pools of a-c use recycling::none
// (recycling::limits could not fire within these few seconds anyway) and
// retry::none (a failed reconnect reaches the operation and counts as a
// failure). Scenario d runs each validating policy twice: with recycling::none,
// where validation alone must catch the open transaction, and with the default
// recycling::limits, whose rollback on return hands the same session on; its
// control has neither. A last case checks recycling::limits on its own.

#include "catch.hpp"
#include "pg.hpp"
#include "sandbox.hpp"

#include <pqpool/pqpool.hpp>

#include <poll.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <ostream>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

using namespace pqpool;
using namespace std::chrono_literals;
using test::sandbox;
using test::unique_name;

namespace {

using clock_type = std::chrono::steady_clock;

// ---------------------------------------------------------------------------
// Queries that cannot hang: a dead connection must give an error, and if it
// does not, the test reports "hung" after a few seconds instead of blocking.

struct exec_outcome {
    enum status_t { ok, error, hung } status = ok;
    std::string value; // first column of the first row, when there is one
    std::string error_text;
};

exec_outcome exec(PGconn* c, const std::string& sql, std::chrono::milliseconds limit = 5s) {
    exec_outcome out;
    auto fail = [&](exec_outcome::status_t s, const char* text) {
        out.status = s;
        out.error_text = text && *text ? text : "(no message)";
        while (!out.error_text.empty() && out.error_text.back() == '\n') out.error_text.pop_back();
        return out;
    };
    const auto deadline = clock_type::now() + limit;
    if (!PQsendQuery(c, sql.c_str())) return fail(exec_outcome::error, PQerrorMessage(c));
    for (;;) {
        while (!PQisBusy(c)) {
            PGresult* r = PQgetResult(c);
            if (!r) return out;
            const ExecStatusType st = PQresultStatus(r);
            if (st == PGRES_TUPLES_OK && PQntuples(r) > 0 && out.value.empty()) out.value = PQgetvalue(r, 0, 0);
            if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK && out.status == exec_outcome::ok)
                fail(exec_outcome::error, PQresultErrorMessage(r));
            PQclear(r);
        }
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - clock_type::now()).count();
        if (left <= 0) return fail(exec_outcome::hung, "no answer within the time limit");
        pollfd p{PQsocket(c), POLLIN, 0};
        if (p.fd < 0) return fail(exec_outcome::error, PQerrorMessage(c));
        if (::poll(&p, 1, static_cast<int>(left)) < 0 && errno != EINTR)
            return fail(exec_outcome::error, "poll() failed");
        if (!PQconsumeInput(c)) return fail(exec_outcome::error, PQerrorMessage(c));
    }
}

// For statements that must work: throws with the server's message.
std::string query(PGconn* c, const std::string& sql) {
    exec_outcome o = exec(c, sql);
    if (o.status != exec_outcome::ok) throw std::runtime_error("query failed: " + sql + ": " + o.error_text);
    return o.value;
}

std::string sql_list(const std::vector<std::string>& names) {
    std::string out;
    for (const std::string& n : names) out += (out.empty() ? "'" : ", '") + n + "'";
    return out;
}

// A connection of our own, outside every pool, to watch and disrupt the server.
class admin {
public:
    admin() : c_(PQconnectdb(sandbox::get().tls().c_str())) {
        if (PQstatus(c_) != CONNECTION_OK) {
            const std::string why = PQerrorMessage(c_);
            PQfinish(c_);
            throw std::runtime_error("admin connection: " + why);
        }
        query(c_, "SET lock_timeout = '5s'");
    }
    admin(const admin&) = delete;
    admin& operator=(const admin&) = delete;
    ~admin() { PQfinish(c_); }

    std::string operator()(const std::string& sql) { return query(c_, sql); }

    int backends_named(const std::vector<std::string>& apps) {
        return std::stoi(
            query(c_, "SELECT count(*) FROM pg_stat_activity WHERE application_name IN (" + sql_list(apps) + ")"));
    }
    int terminate(const std::vector<std::string>& apps) {
        return std::stoi(query(c_, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE application_name IN (" +
                                       sql_list(apps) + ")"));
    }
    // Polls (bounded) until the server no longer lists any backend of `apps`.
    bool wait_until_gone(const std::vector<std::string>& apps, std::chrono::milliseconds limit = 5s) {
        const auto until = clock_type::now() + limit;
        for (;;) {
            if (backends_named(apps) == 0) return true;
            if (clock_type::now() >= until) return false;
            std::this_thread::sleep_for(1ms);
        }
    }
    int pid_of(const std::string& app) {
        return std::stoi(query(c_, "SELECT pid FROM pg_stat_activity WHERE application_name = '" + app + "'"));
    }

private:
    PGconn* c_;
};

template <class V>
constexpr const char* policy_name = "?";
template <>
constexpr const char* policy_name<validation::none> = "validation::none";
template <>
constexpr const char* policy_name<validation::probe> = "validation::probe";
template <>
constexpr const char* policy_name<validation::ping> = "validation::ping";
template <>
constexpr const char* policy_name<validation::ping_if_idle> = "validation::ping_if_idle";

using validating_policies = std::tuple<validation::probe, validation::ping, validation::ping_if_idle>;

struct transport {
    const char* name;
    std::string conninfo;
    int ssl;
};

std::vector<transport> transports() {
    return {{"TLS", sandbox::get().tls(), 1}, {"plain TCP", sandbox::get().plain(), 0}};
}

// ---------------------------------------------------------------------------
// Scenarios a-c: a pool of warm idle connections, a disruption, then 100
// acquire -> SELECT 1 -> release operations.

constexpr std::size_t pool_size = 4;
constexpr int operations = 100;

struct tally {
    int ok = 0, errors = 0, hangs = 0;
    std::string first_failure;

    void failed(exec_outcome::status_t s, const std::string& why) {
        (s == exec_outcome::hung ? hangs : errors)++;
        if (first_failure.empty()) first_failure = why;
    }
};

// One pool with one validation policy and nothing else that could heal it.
class any_arm {
public:
    virtual ~any_arm() = default;
    virtual const std::string& label() const = 0;
    virtual const std::string& app() const = 0;
    virtual bool validates() const = 0;
    virtual std::uint64_t count(event e) const = 0;
    virtual std::uint64_t epoch() const = 0;
    // Opens every connection of the pool and returns them all idle.
    virtual void warm() = 0;
    // `n` operations, in batches that hold every connection of the pool at
    // once, so each idle connection is checked out. A failed operation marks
    // its lease broken, as a careful caller would.
    virtual tally operate(int n) = 0;
};

template <class V>
class arm final : public any_arm {
public:
    using pool_type = pool<V, recycling::none, retry::none, overflow::fixed, observability::counters>;

    arm(const transport& t, const std::vector<std::string>& setup)
        : label_(std::string(policy_name<V>) + " over " + t.name),
          app_(unique_name("pqpool_validation")),
          ssl_(t.ssl),
          pool_(libpq_connector{t.conninfo, {.setup = with_name(setup, app_)}},
                overflow::fixed{.size = pool_size, .wait = 5s}) {}

    const std::string& label() const override { return label_; }
    const std::string& app() const override { return app_; }
    bool validates() const override { return !std::is_same_v<V, validation::none>; }
    std::uint64_t count(event e) const override { return pool_.observer().count(e); }
    std::uint64_t epoch() const override { return pool_.stats().epoch; }

    void warm() override {
        std::vector<typename pool_type::lease> all;
        for (std::size_t i = 0; i < pool_size; ++i) {
            all.push_back(pool_.acquire());
            REQUIRE(PQsslInUse(all.back().get()) == ssl_);
            REQUIRE(query(all.back().get(), "SELECT 1") == "1");
        }
        REQUIRE(pool_.stats().idle == 0);
    }

    tally operate(int n) override {
        tally t;
        for (int done = 0; done < n;) {
            std::vector<typename pool_type::lease> batch;
            for (std::size_t i = 0; i < pool_size && done < n; ++i, ++done) {
                try {
                    auto lease = pool_.acquire();
                    const exec_outcome o = exec(lease.get(), "SELECT 1");
                    if (o.status == exec_outcome::ok && o.value == "1") {
                        ++t.ok;
                    } else {
                        t.failed(o.status, o.error_text);
                        lease.mark_broken();
                    }
                    batch.push_back(std::move(lease));
                } catch (const std::exception& e) {
                    t.failed(exec_outcome::error, std::string("acquire: ") + e.what());
                }
            }
        }
        return t;
    }

private:
    static std::vector<std::string> with_name(std::vector<std::string> setup, const std::string& app) {
        setup.insert(setup.begin(), "SET application_name = '" + app + "'");
        return setup;
    }

    std::string label_, app_;
    int ssl_;
    pool_type pool_;
};

// Every validating policy over each transport, and validation::none over each
// transport as the control, all put through one disruption together (one
// restart, one 2 s pause) to keep the file fast.
class arm_set {
public:
    explicit arm_set(const std::vector<std::string>& setup = {}) {
        for (const transport& t : transports()) {
            add(t, setup, static_cast<validating_policies*>(nullptr));
            arms_.push_back(std::make_unique<arm<validation::none>>(t, setup));
        }
    }

    std::vector<std::string> apps() const {
        std::vector<std::string> out;
        for (const auto& a : arms_) out.push_back(a->app());
        return out;
    }
    int connections() const { return static_cast<int>(arms_.size() * pool_size); }

    void warm() {
        for (auto& a : arms_) a->warm();
    }

    // After the disruption: every validating arm's operations all succeed,
    // having noticed (and replaced) each of its dead connections; every
    // control arm fails at least once, with an error rather than a hang.
    // `server_went_away`: the server said so (FATAL 57P01, a shutdown or a
    // terminated backend), so the first connection that validation finds dead
    // moves the pool's epoch and the others are retired without a look; else
    // (57P05: each session ended on its own) validation finds each one.
    void operate_and_check(bool server_went_away) {
        for (auto& a : arms_) {
            const tally t = a->operate(operations);
            if (a->validates()) {
                INFO(a->label() << ": " << t.errors << " errors, " << t.hangs
                                << " hangs; first failure: " << t.first_failure);
                CHECK(t.ok == operations);
                if (server_went_away) {
                    CHECK(a->count(event::validation_failed) == 1);
                    CHECK(a->count(event::retired) == pool_size - 1);
                    CHECK(a->epoch() == 1);
                } else {
                    CHECK(a->count(event::validation_failed) == pool_size);
                    CHECK(a->epoch() == 0);
                }
                CHECK(a->count(event::connect_failed) == 0);
            } else {
                INFO(a->label() << " (the control, expected to fail): " << t.errors << " errors, " << t.hangs
                                << " hangs; first failure: " << t.first_failure);
                CHECK(t.errors > 0);
                CHECK(t.hangs == 0); // a dead connection, even over TLS, errors at once
                CHECK(a->count(event::validation_failed) == 0);
            }
        }
    }

private:
    template <class... Vs>
    void add(const transport& t, const std::vector<std::string>& setup, std::tuple<Vs...>*) {
        (arms_.push_back(std::make_unique<arm<Vs>>(t, setup)), ...);
    }

    std::vector<std::unique_ptr<any_arm>> arms_;
};

} // namespace

TEST_CASE("validation: after the server terminates every idle backend the next 100 operations succeed",
          "[integration][validation]") {
    admin server;
    arm_set all;
    all.warm();
    const auto apps = all.apps();
    REQUIRE(server.backends_named(apps) == all.connections());

    CHECK(server.terminate(apps) == all.connections());
    REQUIRE(server.wait_until_gone(apps));

    all.operate_and_check(true);
}

TEST_CASE("validation: after idle_session_timeout closes the idle sessions the next 100 operations succeed",
          "[integration][validation]") {
    admin server;
    // Every connection, replacements included, is closed by the server (FATAL
    // 57P05) after 1 s idle; the operations below never idle that long.
    // (Warming every arm takes about a second, so the first arms' connections
    // may be gone before the pause begins: that changes nothing.)
    arm_set all({"SET idle_session_timeout = '1s'"});
    all.warm();

    std::this_thread::sleep_for(2s);
    REQUIRE(server.wait_until_gone(all.apps())); // the server did close them

    all.operate_and_check(false);
}

TEST_CASE("validation: after a server restart the next 100 operations succeed", "[integration][validation]") {
    arm_set all;
    all.warm();

    sandbox::get().ctl("restart"); // pg_ctl restart -m fast -w: returns once the server accepts connections
    admin server;
    REQUIRE(server.backends_named(all.apps()) == 0);

    all.operate_and_check(true);
}

// ---------------------------------------------------------------------------
// Scenario a's hardest moment, isolated. A terminated backend sends its FATAL
// (57P01) at once but closes its socket only when the process has finished
// exiting, about 10 ms later on PostgreSQL 15 (pg_stat_activity stops listing
// it in between). A connection checked out in that window has its death
// already in the socket buffer; a validation that reads those bytes without
// parsing them calls it alive, and the caller's first query fails. This test
// acquires right after the FATAL arrived and before the close did (and tries
// again when it missed that window).
TEMPLATE_LIST_TEST_CASE("validation: a connection whose backend sent FATAL but has not closed yet is not handed out",
                        "[integration][validation]", validating_policies) {
    for (const transport& t : transports()) {
        INFO(policy_name<TestType> << " over " << t.name);
        admin server;
        const std::string app = unique_name("pqpool_validation_fatal");
        pool<TestType, recycling::none, retry::none, overflow::fixed, observability::counters> p{
            libpq_connector{t.conninfo, {.setup = {"SET application_name = '" + app + "'"}}},
            overflow::fixed{.size = 1, .wait = 5s}};
        bool in_window = false;
        for (int attempt = 0; attempt < 10 && !in_window; ++attempt) {
            int fd = -1;
            {
                auto warm = p.acquire();
                REQUIRE(query(warm.get(), "SELECT 1") == "1");
                fd = PQsocket(warm.get());
            }
            // The connection is idle in the pool; the test only watches its socket.
            REQUIRE(std::stoi(
                        server("SELECT count(pg_terminate_backend(" + std::to_string(server.pid_of(app)) + "))")) == 1);
            pollfd fatal{fd, POLLIN, 0};
            REQUIRE(::poll(&fatal, 1, 5000) == 1); // the FATAL arrived
            pollfd closed{fd, static_cast<short>(POLLRDHUP), 0};
            in_window = ::poll(&closed, 1, 0) == 0; // ...and the close not yet
            const auto failed_before = p.observer().count(event::validation_failed);
            auto next = p.acquire();
            const exec_outcome o = exec(next.get(), "SELECT 1");
            if (o.status != exec_outcome::ok) next.mark_broken();
            if (!in_window) continue; // the backend was too quick: nothing was tested, try again
            INFO("the query's error: " << o.error_text);
            CHECK(o.status == exec_outcome::ok);
            CHECK(p.observer().count(event::validation_failed) == failed_before + 1);
        }
        if (!in_window) WARN("never caught a backend between its FATAL and its close: nothing was tested");
    }
}

// ---------------------------------------------------------------------------
// Scenario d: the first user returns its lease inside a transaction (open,
// or failed by an error); the next user of the pool's only connection must
// get it idle and see nothing of the first user's work.

namespace {

enum class leaves { open_transaction, failed_transaction };

const char* describe(leaves how) {
    return how == leaves::open_transaction ? "BEGIN; INSERT, returned open"
                                           : "BEGIN; INSERT; a failed statement, returned in error";
}

// A regular table (not TEMP: the admin connection must see it) with a unique
// name, dropped at the end; each hand-over writes its own `run` of rows.
class scratch_table {
public:
    scratch_table() : name_(unique_name("pqpool_validation_t")) {
        server_("CREATE TABLE " + name_ + " (run int NOT NULL, who text NOT NULL)");
    }
    scratch_table(const scratch_table&) = delete;
    scratch_table& operator=(const scratch_table&) = delete;
    ~scratch_table() {
        try {
            server_("DROP TABLE IF EXISTS " + name_);
        } catch (...) {}
    }

    int next_run() { return ++runs_; }
    std::string insert(int run, const char* who) const {
        return "INSERT INTO " + name_ + " VALUES (" + std::to_string(run) + ", '" + who + "')";
    }
    std::string count(int run) const { return "SELECT count(*) FROM " + name_ + " WHERE run = " + std::to_string(run); }
    // Rows of `run` written by `who`, as a connection outside every pool sees them.
    int committed(int run, const char* who) { return std::stoi(server_(count(run) + " AND who = '" + who + "'")); }

private:
    admin server_;
    std::string name_;
    int runs_ = 0;
};

struct handover {
    PGTransactionStatusType status = PQTRANS_UNKNOWN;  // of the next user's connection, as it got it
    bool same_backend = false;                         // the next user got the first user's session
    std::string rows_seen_by_next;                     // before its own insert; "error: …" when the count failed
    bool next_insert_ok = false;                       // the next user's own work (autocommit) went in
    int admin_first_rows = -1, admin_second_rows = -1; // counted by the admin while the next user held the lease
    int admin_first_rows_after = -1;                   // ... and after the pool is gone

    bool clean() const {
        return status == PQTRANS_IDLE && rows_seen_by_next == "0" && next_insert_ok && admin_first_rows == 0 &&
               admin_second_rows == 1 && admin_first_rows_after == 0;
    }
};

std::ostream& operator<<(std::ostream& os, const handover& h) {
    return os << "status " << h.status << " (PQTRANS_IDLE is " << PQTRANS_IDLE << "), same backend " << h.same_backend
              << ", rows seen by the next user " << h.rows_seen_by_next << ", its insert "
              << (h.next_insert_ok ? "ok" : "failed") << ", admin sees first/second " << h.admin_first_rows << "/"
              << h.admin_second_rows << ", first after " << h.admin_first_rows_after;
}

template <class V, class R>
handover hand_over(scratch_table& table, const transport& t, leaves how) {
    const int run = table.next_run();
    handover h;
    {
        pool<V, R, retry::none, overflow::fixed> p{t.conninfo, overflow::fixed{.size = 1, .wait = 5s}};
        int first_pid = 0;
        {
            auto first = p.acquire();
            first_pid = PQbackendPID(first.get());
            query(first.get(), "BEGIN");
            query(first.get(), table.insert(run, "first"));
            if (how == leaves::failed_transaction) {
                REQUIRE(exec(first.get(), "SELECT 1 / 0").status == exec_outcome::error);
                REQUIRE(PQtransactionStatus(first.get()) == PQTRANS_INERROR);
            } else {
                REQUIRE(PQtransactionStatus(first.get()) == PQTRANS_INTRANS);
            }
        } // returned here, transaction and all
        auto next = p.acquire();
        h.status = PQtransactionStatus(next.get());
        h.same_backend = PQbackendPID(next.get()) == first_pid;
        const exec_outcome seen = exec(next.get(), table.count(run));
        h.rows_seen_by_next = seen.status == exec_outcome::ok ? seen.value : "error: " + seen.error_text;
        h.next_insert_ok = exec(next.get(), table.insert(run, "second")).status == exec_outcome::ok;
        h.admin_first_rows = table.committed(run, "first");
        h.admin_second_rows = table.committed(run, "second");
    } // the lease, then the pool: its connection closes, whatever it still held is rolled back
    h.admin_first_rows_after = table.committed(run, "first");
    return h;
}

} // namespace

TEMPLATE_LIST_TEST_CASE("validation: a lease returned inside a transaction reaches the next user idle and clean",
                        "[integration][validation]", validating_policies) {
    scratch_table table;
    for (const transport& t : transports()) {
        for (leaves how : {leaves::open_transaction, leaves::failed_transaction}) {
            INFO(t.name << ", first user: " << describe(how));
            {
                // Validation alone: the probe sees a transaction status that is
                // not idle, so the connection is closed and replaced.
                const handover h = hand_over<TestType, recycling::none>(table, t, how);
                INFO(policy_name<TestType> << " + recycling::none: " << h);
                CHECK(h.clean());
                CHECK_FALSE(h.same_backend);
            }
            {
                // With the default recycling the connection is rolled back on
                // return, so the next user gets the same session, cleaned.
                const handover h = hand_over<TestType, recycling::limits>(table, t, how);
                INFO(policy_name<TestType> << " + recycling::limits: " << h);
                CHECK(h.clean());
                CHECK(h.same_backend);
            }
            {
                const handover h = hand_over<validation::none, recycling::none>(table, t, how);
                INFO("validation::none + recycling::none (the control, expected to fail): " << h);
                CHECK_FALSE(h.clean());
                CHECK(h.same_backend);
                CHECK(h.status != PQTRANS_IDLE);
            }
        }
    }
}

TEST_CASE("recycling::limits alone (validation::none) rolls back a transaction left open",
          "[integration][validation]") {
    scratch_table table;
    for (const transport& t : transports()) {
        for (leaves how : {leaves::open_transaction, leaves::failed_transaction}) {
            INFO(t.name << ", first user: " << describe(how));
            const handover h = hand_over<validation::none, recycling::limits>(table, t, how);
            INFO(h);
            CHECK(h.clean());
            CHECK(h.same_backend);
        }
    }
}
