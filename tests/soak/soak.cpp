// pqpool_soak: a chaos soak against a real PostgreSQL 15 (and PgBouncer 1.18).
//
// Worker threads run idempotent work through pool.run() (an upsert of a per-thread row to
// the operation's number, then a read-back that must return it) on pools with production
// policies, while a chaos thread, at seeded random intervals, does one of: terminate random
// backends of the pools, restart the server, set a 1 s idle_session_timeout for a while,
// freeze and heal the network path (a fault_proxy in front of the server), restart PgBouncer,
// and fork children that use the pool and exit. At the end it prints what happened and exits
// non-zero unless: no idempotent operation failed, the pool and the server agree on the pool's
// connections (and both drop to zero once the pools are gone), no descriptor leaked, every
// child exited 0 in time, and (with --check-rss, the long form) RSS stayed flat.
//
//   pqpool_soak [--seconds N] [--seed S] [--threads N] [--bouncer-threads N] [--pause-ms N]
//               [--check-rss] [--rss-tolerance-mb N] [--default-retry] [--bouncer-login-retry S]
//
// --seed replays the chaos schedule (actions, intervals, hold times, numbers of backends and
// children), not the workers' interleaving. It needs the scripts/pg-sandbox server
// (PQPOOL_SANDBOX_STATE, started with --pgbouncer): it restarts the server and PgBouncer, and
// changes server settings (ALTER SYSTEM) that it resets before it exits.
//
// The pools. "main": pqpool::pool<> defaults (ping_if_idle 1 s, limits, bounded 5 + 10 with a
// 30 s wait, fork detect, mutex) over TLS through the fault proxy, with a counting connector
// and observability::counters. "PgBouncer": the same through PgBouncer with
// overflow::pass_through. Both use exponential_backoff{attempts = 12, base = 100 ms,
// cap = 2 s} instead of the default 5 attempts: a chain of connects, and run() after a loss,
// then keep trying for 8.5 s on average (more than 3 s with probability ~0.9999), longer than
// a server restart keeps the server away (0.5-2.5 s here) or a PgBouncer restart (~2 s). The
// default budget (0.75 s on average) is shorter than a restart: a run() whose *first*
// acquire falls into a restart, with no connection in the pool, then gets the connect_error
// by design (basic_pool::run: "the first acquire is not retried"), and a loss through a restarting
// PgBouncer runs out of attempts. --default-retry runs with the default to show that.
// PgBouncer's server_login_retry is set to 1 s (--bouncer-login-retry) through its console:
// with its default, 15 s, PgBouncer closes every client at its first query for up to 15 s
// after a server restart, longer than any of these budgets.
// The soak itself never catches and retries: one run() is one operation.

#include "fault_proxy.hpp"
#include "sandbox.hpp"
#include "sockets.hpp"

#include <pqpool/pqpool.hpp>

#include <libpq-fe.h>

#include <cxxabi.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <typeinfo>
#include <utility>
#include <vector>

namespace {

using namespace std::chrono_literals;
using pqpool::test::sandbox;
using steady = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------------------
// Options

struct options {
    double seconds = 60;
    std::uint64_t seed = 0;
    bool seed_given = false;
    int threads = 16;
    int bouncer_threads = 4; // of `threads`
    int pause_ms = 10;       // mean think time between a worker's operations
    bool check_rss = false;
    long rss_tolerance_mb = 32;
    bool default_retry = false;
    int bouncer_login_retry = 1; // PgBouncer's server_login_retry, seconds
};

[[noreturn]] void usage(const char* why) {
    std::fprintf(stderr,
                 "pqpool_soak: %s\n"
                 "usage: pqpool_soak [--seconds N] [--seed S] [--threads N] [--bouncer-threads N]\n"
                 "                   [--pause-ms N] [--check-rss] [--rss-tolerance-mb N] [--default-retry]\n"
                 "                   [--bouncer-login-retry SECONDS]\n",
                 why);
    std::exit(2);
}

template <class T>
T number(const char* flag, const char* text) {
    try {
        std::size_t used = 0;
        const std::string s = text;
        if constexpr (std::is_floating_point_v<T>) {
            const double v = std::stod(s, &used);
            if (used == s.size() && v >= 0) return static_cast<T>(v);
        } else {
            const unsigned long long v = std::stoull(s, &used, 0);
            if (used == s.size() && s[0] != '-') return static_cast<T>(v);
        }
    } catch (const std::exception&) {}
    usage((std::string(flag) + " needs a non-negative number, not '" + text + "'").c_str());
}

options parse(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) usage((std::string(a) + " needs a value").c_str());
            return argv[++i];
        };
        if (a == "--seconds")
            o.seconds = number<double>("--seconds", value());
        else if (a == "--seed")
            o.seed = number<std::uint64_t>("--seed", value()), o.seed_given = true;
        else if (a == "--threads")
            o.threads = number<int>("--threads", value());
        else if (a == "--bouncer-threads")
            o.bouncer_threads = number<int>("--bouncer-threads", value());
        else if (a == "--pause-ms")
            o.pause_ms = number<int>("--pause-ms", value());
        else if (a == "--check-rss")
            o.check_rss = true;
        else if (a == "--rss-tolerance-mb")
            o.rss_tolerance_mb = number<long>("--rss-tolerance-mb", value());
        else if (a == "--default-retry")
            o.default_retry = true;
        else if (a == "--bouncer-login-retry")
            o.bouncer_login_retry = number<int>("--bouncer-login-retry", value());
        else if (a == "-h" || a == "--help")
            usage("help");
        else
            usage(("unknown argument '" + std::string(a) + "'").c_str());
    }
    if (o.seconds <= 0 || o.seconds > 30 * 24 * 3600.0) usage("--seconds must be in (0, 30 days]");
    if (o.threads < 1 || o.threads > 256) usage("--threads must be 1..256");
    if (o.bouncer_threads > o.threads - 1) usage("--bouncer-threads must leave at least one thread for the main pool");
    if (o.pause_ms > 10000) usage("--pause-ms must be at most 10000");
    if (!o.seed_given) o.seed = std::random_device{}() ^ (std::uint64_t{std::random_device{}()} << 32);
    return o;
}

// ---------------------------------------------------------------------------------------------
// Small things

const steady::time_point program_start = steady::now();

double since_start() { return std::chrono::duration<double>(steady::now() - program_start).count(); }

std::mutex log_mutex;

[[gnu::format(printf, 1, 2)]] void say(const char* fmt, ...) {
    char buf[16384];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    std::lock_guard lock(log_mutex);
    std::printf("[%8.3f] %s\n", since_start(), buf);
    std::fflush(stdout);
}

long rss_kib() {
    std::ifstream in("/proc/self/status");
    for (std::string line; std::getline(in, line);)
        if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
    return -1;
}

std::string fd_list() {
    std::string out;
    for (int fd = 0; fd < 4096; ++fd) {
        char path[64], target[512];
        std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        const ssize_t n = ::readlink(path, target, sizeof target - 1);
        if (n < 0) continue;
        target[n] = '\0';
        out += "  " + std::to_string(fd) + " -> " + target + "\n";
    }
    return out;
}

std::string type_name(const std::exception& e) {
    int status = 0;
    char* d = abi::__cxa_demangle(typeid(e).name(), nullptr, nullptr, &status);
    std::string s = status == 0 && d ? d : typeid(e).name();
    std::free(d);
    return s;
}

// Sleeps until `until` or until `stop` is set, in short steps (bounded).
void nap_until(steady::time_point until, const std::atomic<bool>& stop) {
    for (int i = 0; i < 1000000 && !stop.load() && steady::now() < until; ++i)
        std::this_thread::sleep_for(std::min<steady::duration>(until - steady::now(), 50ms));
}

// ---------------------------------------------------------------------------------------------
// A connector that counts what the pool opens and closes (the libpq connector underneath).

struct connector_counts {
    std::atomic<std::uint64_t> opened{0}, closed{0}, discarded{0}, abandoned{0}, attempts_cancelled{0};
    std::uint64_t gone() const { return closed.load() + discarded.load() + abandoned.load(); }
};

class counting_connector {
public:
    using category = pqpool::connector_tag;
    using handle = pqpool::libpq_connector::handle;
    using clock = pqpool::libpq_connector::clock;
    using attempt = pqpool::libpq_connector::attempt;

    counting_connector(const std::string& conninfo, std::shared_ptr<connector_counts> counts)
        : inner_(conninfo),
          counts_(std::move(counts)) {}

    handle continue_connect(attempt& a, clock::time_point deadline) const {
        const handle h = inner_.continue_connect(a, deadline);
        if (h) ++counts_->opened;
        return h;
    }
    void cancel_connect(attempt& a) const noexcept {
        if (a.in_progress()) ++counts_->attempts_cancelled;
        inner_.cancel_connect(a);
    }
    void abandon_connect(attempt& a) const noexcept { inner_.abandon_connect(a); }
    void close(handle h) const noexcept {
        if (h) ++counts_->closed;
        inner_.close(h);
    }
    void discard(handle h) const noexcept {
        if (h) ++counts_->discarded;
        inner_.discard(h);
    }
    void abandon(handle h) const noexcept {
        if (h) ++counts_->abandoned;
        inner_.abandon(h);
    }
    bool probe(handle h) const noexcept { return inner_.probe(h); }
    bool broken(handle h) const noexcept { return inner_.broken(h); }
    bool ping(handle h, clock::time_point deadline) const noexcept { return inner_.ping(h, deadline); }
    bool reset(handle h, bool discard_all) const noexcept { return inner_.reset(h, discard_all); }

private:
    pqpool::libpq_connector inner_;
    std::shared_ptr<connector_counts> counts_;
};

using main_pool = pqpool::pool<counting_connector, pqpool::observability::counters>;
using bouncer_pool = pqpool::pool<counting_connector, pqpool::overflow::pass_through, pqpool::observability::counters>;

pqpool::retry::exponential_backoff soak_retry(const options& o) {
    if (o.default_retry) return {};
    return pqpool::retry::exponential_backoff{.attempts = 12, .base = 100ms, .cap = 2s, .connecting = 2};
}

// ---------------------------------------------------------------------------------------------
// Direct connections for the chaos thread and the checks (never through the proxy or a pool).

struct result_deleter {
    void operator()(PGresult* r) const noexcept { PQclear(r); }
};
using result = std::unique_ptr<PGresult, result_deleter>;

// Runs `sql` with text parameters; returns the first column of the first row ("" if none).
// Throws std::runtime_error with the server's message and SQLSTATE on failure.
std::string exec(PGconn* c, const char* sql, std::initializer_list<std::string> params = {}) {
    std::vector<const char*> values;
    for (const auto& p : params) values.push_back(p.c_str());
    result r{PQexecParams(c, sql, static_cast<int>(values.size()), nullptr, values.data(), nullptr, nullptr, 0)};
    const auto status = PQresultStatus(r.get());
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
        const char* state = PQresultErrorField(r.get(), PG_DIAG_SQLSTATE);
        std::string msg = PQresultErrorMessage(r.get());
        while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
        for (char& ch : msg)
            if (ch == '\n') ch = ' ';
        throw std::runtime_error(std::string(sql).substr(0, 40) + "...: " + msg + " [SQLSTATE " +
                                 (state ? state : "none") + ", connection " +
                                 (PQstatus(c) == CONNECTION_OK ? "ok" : "bad") + "]");
    }
    return status == PGRES_TUPLES_OK && PQntuples(r.get()) > 0 ? PQgetvalue(r.get(), 0, 0) : "";
}

class direct {
public:
    // Connects, retrying for up to `within` (the server may be coming back up).
    explicit direct(const std::string& conninfo, std::chrono::seconds within = 30s) {
        const auto until = steady::now() + within;
        std::string last;
        for (int i = 0; i < 10000; ++i) {
            c_ = PQconnectdb(conninfo.c_str());
            if (PQstatus(c_) == CONNECTION_OK) {
                // Its notices ("relation exists", "PID n is not a PostgreSQL backend process"
                // for a backend that exited meanwhile) are expected; keep the log readable.
                PQsetNoticeProcessor(
                    c_, [](void*, const char*) {}, nullptr);
                return;
            }
            last = PQerrorMessage(c_);
            PQfinish(c_);
            c_ = nullptr;
            if (steady::now() >= until) break;
            std::this_thread::sleep_for(200ms);
        }
        throw std::runtime_error("cannot connect (" + conninfo.substr(0, conninfo.find(" port")) + "): " + last);
    }
    direct(const direct&) = delete;
    direct& operator=(const direct&) = delete;
    ~direct() { PQfinish(c_); }
    PGconn* get() const { return c_; }

private:
    PGconn* c_ = nullptr;
};

struct endpoints {
    std::string server_admin; // direct, TLS
    std::string bouncer_admin;
    std::string main_app, bouncer_app;
};

int server_backends_named(const endpoints& ep, const std::string& app) {
    direct d{ep.server_admin};
    return std::stoi(exec(d.get(), "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", {app}));
}

// PgBouncer's server_login_retry, set through its console (a restart of PgBouncer resets it).
void set_bouncer_login_retry(const endpoints& ep, int seconds) {
    direct console{ep.bouncer_admin};
    result r{PQexec(console.get(), ("SET server_login_retry = " + std::to_string(seconds)).c_str())};
    if (PQresultStatus(r.get()) != PGRES_COMMAND_OK && PQresultStatus(r.get()) != PGRES_TUPLES_OK)
        throw std::runtime_error(std::string("PgBouncer: SET server_login_retry failed: ") +
                                 PQresultErrorMessage(r.get()));
}

int bouncer_clients_named(const endpoints& ep, const std::string& app) {
    direct console{ep.bouncer_admin};
    result r{PQexec(console.get(), "SHOW CLIENTS")};
    if (PQresultStatus(r.get()) != PGRES_TUPLES_OK)
        throw std::runtime_error(std::string("SHOW CLIENTS failed: ") + PQresultErrorMessage(r.get()));
    const int col = PQfnumber(r.get(), "application_name");
    if (col < 0) throw std::runtime_error("SHOW CLIENTS has no application_name column");
    int n = 0;
    for (int i = 0; i < PQntuples(r.get()); ++i) n += app == PQgetvalue(r.get(), i, col);
    return n;
}

// ---------------------------------------------------------------------------------------------
// The work, and its tally

struct tally {
    std::atomic<std::uint64_t> attempted{0}, succeeded{0}, failed{0};
    std::atomic<std::int64_t> max_latency_us{0};
    std::mutex m;
    std::map<std::string, std::uint64_t> kinds;  // failed operations: "type: message" -> count (bounded)
    std::map<std::string, std::uint64_t> losses; // attempts of the work that failed: message -> count (bounded)

    void latency(std::chrono::microseconds d) {
        std::int64_t seen = max_latency_us.load();
        while (d.count() > seen && !max_latency_us.compare_exchange_weak(seen, d.count())) {}
    }
    void fail(const std::string& pool, const std::string& type, const std::string& what, const std::string& story) {
        ++failed;
        say("FAILURE (%s pool): %s: %s", pool.c_str(), type.c_str(), story.c_str());
        std::lock_guard lock(m);
        const std::string key = type + ": " + what;
        if (kinds.size() < 200 || kinds.count(key)) ++kinds[key];
    }
    void lost(const std::vector<std::string>& attempts) {
        std::lock_guard lock(m);
        for (const auto& a : attempts)
            if (losses.size() < 200 || losses.count(a)) ++losses[a];
    }
};

// One idempotent operation: set this thread's row to `n`, read it back.
void work(PGconn* c, const std::string& id, std::uint64_t n) {
    const std::string v = std::to_string(n);
    exec(c, "INSERT INTO pqpool_soak (id, n) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n", {id, v});
    const std::string back = exec(c, "SELECT n FROM pqpool_soak WHERE id = $1", {id});
    if (back != v) throw std::logic_error("read back n = '" + back + "' for " + id + " after writing " + v);
}

template <class Pool>
void worker(Pool& pool, tally& t, const char* pool_name, std::string id, std::uint64_t seed, steady::time_point stop_at,
            int pause_ms, const std::atomic<bool>& abort) {
    std::mt19937_64 rng{seed};
    std::uniform_int_distribution<int> pause(0, 2 * pause_ms);
    // What each attempt of the current operation (each call of the work by run()) ended with,
    // for the report of an operation that fails in the end. Only observed: the work rethrows.
    std::vector<std::string> history, messages;
    char stamp[64];
    for (std::uint64_t n = 1; n <= 1'000'000'000ULL && !abort.load() && steady::now() < stop_at; ++n) {
        ++t.attempted;
        const auto t0 = steady::now();
        history.clear();
        messages.clear();
        try {
            pool.run([&](PGconn* c) {
                try {
                    work(c, id, n);
                } catch (const std::exception& e) {
                    std::snprintf(stamp, sizeof stamp, "[%.3f] attempt %zu on backend %d: ", since_start(),
                                  history.size() + 1, PQbackendPID(c));
                    history.push_back(stamp + std::string(e.what()));
                    messages.emplace_back(e.what());
                    throw;
                }
            });
            ++t.succeeded;
        } catch (const std::exception& e) {
            std::string what = e.what();
            for (const auto& h : history) what += "\n      " + h;
            t.fail(pool_name, type_name(e), e.what(), what);
        } catch (...) {
            t.fail(pool_name, "(not a std::exception)", "", "");
        }
        if (!messages.empty()) t.lost(messages);
        t.latency(std::chrono::duration_cast<std::chrono::microseconds>(steady::now() - t0));
        if (pause_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds{pause(rng)});
    }
}

// ---------------------------------------------------------------------------------------------
// Chaos

enum class action : unsigned char { terminate, restart, idle_timeout, freeze, pgbouncer_restart, fork };
constexpr std::array<const char*, 6> action_names = {"terminate backends",        "restart the server",
                                                     "idle_session_timeout = 1s", "freeze the path",
                                                     "restart PgBouncer",         "fork children"};

struct chaos_tally {
    std::array<std::uint64_t, 6> done{};
    std::uint64_t terminated = 0, children = 0, children_ok = 0;
    std::vector<std::string> errors; // the chaos machinery's own failures (not the pool's)
    std::vector<std::string> child_failures;
};

void write_stderr(const std::string& s) noexcept {
    std::size_t off = 0;
    for (int i = 0; i < 100 && off < s.size(); ++i) {
        const ssize_t n = ::write(2, s.data() + off, s.size() - off);
        if (n <= 0) break;
        off += static_cast<std::size_t>(n);
    }
}

// In a forked child: acquire from the inherited pool (which abandons what it inherited),
// one query, return it, close the pool, exit. Never returns.
[[noreturn]] void child_main(main_pool& pool) noexcept {
    int code = 0;
    try {
        auto lease = pool.acquire_for(10s);
        result r{PQexec(lease.get(), "SELECT 1")};
        if (PQresultStatus(r.get()) != PGRES_TUPLES_OK || PQntuples(r.get()) != 1 ||
            std::string_view(PQgetvalue(r.get(), 0, 0)) != "1") {
            write_stderr("pqpool_soak child " + std::to_string(::getpid()) +
                         ": SELECT 1 failed: " + PQerrorMessage(lease.get()) + "\n");
            code = 1;
        }
        r.reset();
        lease.release();
        pool.close();
    } catch (const std::exception& e) {
        write_stderr("pqpool_soak child " + std::to_string(::getpid()) + ": " + type_name(e) + ": " + e.what() + "\n");
        code = 2;
    } catch (...) {
        code = 3;
    }
    ::_exit(code);
}

class chaos {
public:
    chaos(const options& o, const endpoints& ep, pqpool::test::fault_proxy& proxy, main_pool& pool,
          steady::time_point stop_at, const std::atomic<bool>& abort)
        : o_(o),
          ep_(ep),
          proxy_(proxy),
          pool_(pool),
          stop_at_(stop_at),
          abort_(abort),
          rng_(o.seed) {}

    chaos_tally run() {
        std::vector<action> deck;
        for (int i = 0; i < 1'000'000; ++i) {
            // A random interval, then the next action of a shuffled deck of all six: random,
            // yet every kind comes up in every six actions (a short run covers them all).
            const auto gap = std::chrono::milliseconds{std::uniform_int_distribution<int>(500, 3000)(rng_)};
            nap_until(steady::now() + gap, abort_);
            if (abort_.load() || steady::now() + 200ms >= stop_at_) break;
            if (deck.empty()) {
                deck = {action::terminate, action::restart,           action::idle_timeout,
                        action::freeze,    action::pgbouncer_restart, action::fork};
                std::shuffle(deck.begin(), deck.end(), rng_);
            }
            const action a = deck.back();
            deck.pop_back();
            try {
                perform(a);
                ++t_.done[static_cast<std::size_t>(a)];
            } catch (const std::exception& e) {
                t_.errors.push_back(std::string(action_names[static_cast<std::size_t>(a)]) + ": " + e.what());
                say("chaos: %s failed: %s", action_names[static_cast<std::size_t>(a)], e.what());
                restore();
            }
        }
        restore();
        return std::move(t_);
    }

    // Undo what an action may have left behind (also after a failure).
    void restore() {
        try {
            proxy_.heal();
        } catch (const std::exception& e) {
            t_.errors.push_back(std::string("heal: ") + e.what());
        }
    }

private:
    int uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

    void perform(action a) {
        switch (a) {
        case action::terminate: {
            std::vector<std::string> pids;
            direct d{ep_.server_admin};
            {
                result r{PQexecParams(
                    d.get(), "SELECT pid FROM pg_stat_activity WHERE application_name IN ($1, $2) ORDER BY pid", 2,
                    nullptr, std::array<const char*, 2>{ep_.main_app.c_str(), ep_.bouncer_app.c_str()}.data(), nullptr,
                    nullptr, 0)};
                if (PQresultStatus(r.get()) != PGRES_TUPLES_OK) throw std::runtime_error(PQresultErrorMessage(r.get()));
                for (int i = 0; i < PQntuples(r.get()); ++i) pids.emplace_back(PQgetvalue(r.get(), i, 0));
            }
            const int want = pids.empty() ? 0 : uniform(1, static_cast<int>(pids.size()));
            std::shuffle(pids.begin(), pids.end(), rng_);
            int killed = 0;
            for (int i = 0; i < want; ++i)
                killed +=
                    exec(d.get(), "SELECT pg_terminate_backend($1::int)", {pids[static_cast<std::size_t>(i)]}) == "t";
            t_.terminated += static_cast<std::uint64_t>(killed);
            say("chaos: terminated %d of %zu backends of the pools", killed, pids.size());
            return;
        }
        case action::restart: {
            say("chaos: restarting the server");
            const auto t0 = steady::now();
            sandbox::get().ctl("restart");
            say("chaos: server restarted (%.2f s)", std::chrono::duration<double>(steady::now() - t0).count());
            return;
        }
        case action::idle_timeout: {
            const int hold = uniform(2000, 6000);
            {
                direct d{ep_.server_admin};
                exec(d.get(), "ALTER SYSTEM SET idle_session_timeout = '1s'");
                exec(d.get(), "SELECT pg_reload_conf()");
            }
            say("chaos: idle_session_timeout = 1s for %d ms", hold);
            nap_until(steady::now() + std::chrono::milliseconds{hold}, abort_);
            direct d{ep_.server_admin};
            exec(d.get(), "ALTER SYSTEM RESET idle_session_timeout");
            exec(d.get(), "SELECT pg_reload_conf()");
            say("chaos: idle_session_timeout reset");
            return;
        }
        case action::freeze: {
            const int hold = uniform(1000, 4000);
            proxy_.freeze();
            say("chaos: path frozen for %d ms (%zu connections through the proxy)", hold, proxy_.connections());
            nap_until(steady::now() + std::chrono::milliseconds{hold}, abort_);
            proxy_.heal();
            say("chaos: path healed");
            return;
        }
        case action::pgbouncer_restart: {
            say("chaos: restarting PgBouncer");
            const auto t0 = steady::now();
            sandbox::get().ctl("pgbouncer-restart");
            set_bouncer_login_retry(ep_, o_.bouncer_login_retry);
            say("chaos: PgBouncer restarted (%.2f s)", std::chrono::duration<double>(steady::now() - t0).count());
            return;
        }
        case action::fork: {
            const int n = uniform(1, 3);
            std::vector<pid_t> kids;
            std::fflush(stdout);
            std::fflush(stderr);
            for (int i = 0; i < n; ++i) {
                const pid_t pid = ::fork();
                if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
                if (pid == 0) child_main(pool_);
                kids.push_back(pid);
            }
            t_.children += static_cast<std::uint64_t>(n);
            const int ok = reap(std::move(kids), 20s);
            t_.children_ok += static_cast<std::uint64_t>(ok);
            say("chaos: forked %d children that used the pool; %d exited 0", n, ok);
            return;
        }
        }
    }

    // Waits (bounded) for every child; one that hangs past `bound` is killed and counted.
    // Returns how many exited 0.
    int reap(std::vector<pid_t> kids, std::chrono::seconds bound) {
        const auto until = steady::now() + bound;
        int ok = 0;
        for (int i = 0; i < 100000 && !kids.empty(); ++i) {
            for (auto it = kids.begin(); it != kids.end();) {
                int status = 0;
                const pid_t got = ::waitpid(*it, &status, WNOHANG);
                if (got == 0) {
                    ++it;
                    continue;
                }
                if (got == *it && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
                    ++ok;
                } else {
                    const std::string why = got < 0             ? std::string("waitpid: ") + std::strerror(errno)
                                            : WIFEXITED(status) ? "exited " + std::to_string(WEXITSTATUS(status))
                                            : WIFSIGNALED(status)
                                                ? "killed by signal " + std::to_string(WTERMSIG(status))
                                                : "status " + std::to_string(status);
                    t_.child_failures.push_back("child " + std::to_string(*it) + " " + why);
                    say("FAILURE: child %d %s", static_cast<int>(*it), why.c_str());
                }
                it = kids.erase(it);
            }
            if (kids.empty() || steady::now() >= until) break;
            std::this_thread::sleep_for(10ms);
        }
        for (pid_t pid : kids) { // hung past the bound
            ::kill(pid, SIGKILL);
            int status = 0;
            (void)::waitpid(pid, &status, 0);
            t_.child_failures.push_back("child " + std::to_string(pid) + " hung for more than " +
                                        std::to_string(bound.count()) + " s (killed)");
            say("FAILURE: child %d hung; killed", static_cast<int>(pid));
        }
        return ok;
    }

    const options& o_;
    const endpoints& ep_;
    pqpool::test::fault_proxy& proxy_;
    main_pool& pool_;
    steady::time_point stop_at_;
    const std::atomic<bool>& abort_;
    std::mt19937_64 rng_;
    chaos_tally t_;
};

// ---------------------------------------------------------------------------------------------
// The server's settings for the soak, and their reset

// Low server-side keepalives, so that a backend whose client vanished without a FIN would be
// found within ~8 s (tcp_keepalives_idle 5, interval 1, count 3). In this soak no client
// should vanish that way: the proxy's freeze keeps both sockets and heal() passes on what was
// held (a client's Terminate and FIN included), and a frozen proxy's kernel would answer the
// probes anyway. So the final comparison waits (bounded, 20 s) for backends that are exiting,
// and these settings only bound what a proxy bug could leave behind. Reset at the end, with
// idle_session_timeout (which an interrupted action could have left set).
class server_settings {
public:
    server_settings(const endpoints& ep, std::string tag) : ep_(ep), tag_(std::move(tag)) {
        direct d{ep_.server_admin};
        exec(d.get(), "CREATE TABLE IF NOT EXISTS pqpool_soak (id text PRIMARY KEY, n bigint NOT NULL)");
        exec(d.get(), "ALTER SYSTEM SET tcp_keepalives_idle = 5");
        exec(d.get(), "ALTER SYSTEM SET tcp_keepalives_interval = 1");
        exec(d.get(), "ALTER SYSTEM SET tcp_keepalives_count = 3");
        exec(d.get(), "SELECT pg_reload_conf()");
    }
    server_settings(const server_settings&) = delete;
    server_settings& operator=(const server_settings&) = delete;
    ~server_settings() {
        try {
            direct d{ep_.server_admin};
            for (const char* sql : {"ALTER SYSTEM RESET idle_session_timeout", "ALTER SYSTEM RESET tcp_keepalives_idle",
                                    "ALTER SYSTEM RESET tcp_keepalives_interval",
                                    "ALTER SYSTEM RESET tcp_keepalives_count", "SELECT pg_reload_conf()"})
                exec(d.get(), sql);
            exec(d.get(), "DELETE FROM pqpool_soak WHERE id LIKE $1", {tag_ + "%"});
        } catch (const std::exception& e) {
            say("WARNING: could not reset the server's settings: %s", e.what());
        }
    }

private:
    const endpoints& ep_;
    std::string tag_;
};

// ---------------------------------------------------------------------------------------------
// The run

struct verdict {
    std::vector<std::string> problems;
    void check(bool ok, const std::string& what) {
        if (!ok) problems.push_back(what);
    }
};

template <class Pool>
void print_events(const char* name, const Pool& p, const connector_counts& c) {
    using pqpool::event;
    const auto& ob = p.observer();
    say("events, %s pool: connected %" PRIu64 ", connect_failed %" PRIu64 ", retry %" PRIu64
        ", validation_failed %" PRIu64 ", retired %" PRIu64 ", trimmed %" PRIu64 ", timeout %" PRIu64
        ", exhausted %" PRIu64,
        name, ob.count(event::connected), ob.count(event::connect_failed), ob.count(event::retry),
        ob.count(event::validation_failed), ob.count(event::retired), ob.count(event::trimmed),
        ob.count(event::timeout), ob.count(event::exhausted));
    say("connections, %s pool: opened %" PRIu64 ", closed %" PRIu64 " (close %" PRIu64 ", discard %" PRIu64
        ", abandon %" PRIu64 "); connects given up unfinished %" PRIu64,
        name, c.opened.load(), c.gone(), c.closed.load(), c.discarded.load(), c.abandoned.load(),
        c.attempts_cancelled.load());
}

void print_tally(const char* name, const tally& t) {
    say("operations, %s pool: attempted %" PRIu64 ", succeeded %" PRIu64 ", failed %" PRIu64 " (longest %.3f s)", name,
        t.attempted.load(), t.succeeded.load(), t.failed.load(), static_cast<double>(t.max_latency_us.load()) / 1e6);
}

std::string show_stats(const pqpool::pool_stats& s) {
    return "size " + std::to_string(s.size) + " (idle " + std::to_string(s.idle) + ", in use " +
           std::to_string(s.in_use) + ", opening " + std::to_string(s.opening) + ", waiting " +
           std::to_string(s.waiting) + ")";
}

// Polls (bounded) until `done()` or `within` passed; returns done()'s last answer.
// A failure to ask (the server or PgBouncer not answering) counts as "not yet".
template <class F>
bool settle(std::chrono::milliseconds within, F done) {
    const auto until = steady::now() + within;
    for (int i = 0; i < 100000; ++i) {
        try {
            if (done()) return true;
        } catch (const std::exception& e) {
            say("settling: %s: %s", type_name(e).c_str(), e.what());
        }
        if (steady::now() >= until) return false;
        std::this_thread::sleep_for(100ms);
    }
    return false;
}

int soak(const options& o, std::size_t fds_before, long rss_start) {
    const sandbox& sb = sandbox::get();
    const std::string pid = std::to_string(::getpid());
    endpoints ep;
    ep.main_app = "pqpool_soak_" + pid;
    ep.bouncer_app = "pqpool_soak_bouncer_" + pid;
    ep.server_admin = sb.tls() + " application_name=pqpool_soak_admin connect_timeout=5";
    ep.bouncer_admin = "host=127.0.0.1 port=" + sb.var("PQPOOL_TEST_PGBOUNCER_PORT") +
                       " dbname=pgbouncer user=pqpool sslmode=disable connect_timeout=5";
    const std::string tag = "soak" + pid + ":";
    const int main_threads = o.threads - o.bouncer_threads;
    const auto retry = soak_retry(o);
    say("pqpool soak: seed %" PRIu64 " (replay the chaos schedule with --seed %" PRIu64 "), %.0f s, %d threads: %d on "
        "the main pool (TLS, through a fault proxy), %d on the PgBouncer pool (pass_through)",
        o.seed, o.seed, o.seconds, o.threads, main_threads, o.bouncer_threads);
    say("retry: exponential_backoff{attempts %u, base %lld ms, cap %lld ms, connecting %zu}%s", retry.attempts,
        static_cast<long long>(retry.base.count()), static_cast<long long>(retry.cap.count()), retry.connecting,
        o.default_retry ? " (the default, --default-retry)" : "");

    set_bouncer_login_retry(ep, o.bouncer_login_retry);
    say("PgBouncer: server_login_retry = %d s (its default, 15 s, closes every client at its first query for up "
        "to 15 s after a server restart: longer than the retry budget)",
        o.bouncer_login_retry);

    verdict v;
    tally main_t, bouncer_t;
    chaos_tally ct;
    auto main_counts = std::make_shared<connector_counts>();
    auto bouncer_counts = std::make_shared<connector_counts>();
    long rss_chaos_start = 0, rss_end = 0;
    std::vector<std::pair<double, long>> rss_samples;
    std::mutex rss_mutex;
    std::atomic<bool> finished{false};
    {
        server_settings settings{ep, tag};
        {
            pqpool::test::fault_proxy proxy{std::stoi(sb.var("PQPOOL_TEST_PORT"))};
            main_pool mp{counting_connector{proxy.route(sb.tls() + " application_name=" + ep.main_app), main_counts},
                         retry};
            bouncer_pool bp{counting_connector{sb.pgbouncer() + " application_name=" + ep.bouncer_app, bouncer_counts},
                            retry};

            std::atomic<bool> abort{false};
            rss_chaos_start = rss_kib();
            const auto chaos_start = steady::now();
            const auto length = std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(o.seconds));
            const auto stop_at = chaos_start + length;
            const auto hard_deadline = stop_at + 300s;

            // The watchdog: RSS samples at every tenth of the run, the pools' largest sizes
            // (checked against the overflow policy's bound), and a hard deadline.
            std::size_t main_most = 0, main_waiting_most = 0, bouncer_most = 0;
            std::thread watchdog([&] {
                int next_tenth = 1;
                for (long i = 0; i < 100'000'000L && !finished.load(); ++i) {
                    std::this_thread::sleep_for(100ms);
                    const auto ms = mp.stats();
                    main_most = std::max(main_most, ms.size);
                    main_waiting_most = std::max(main_waiting_most, ms.waiting);
                    bouncer_most = std::max(bouncer_most, bp.stats().size);
                    const auto now = steady::now();
                    if (next_tenth <= 10 && now >= chaos_start + length * next_tenth / 10) {
                        std::lock_guard lock(rss_mutex);
                        rss_samples.emplace_back(std::chrono::duration<double>(now - chaos_start).count(), rss_kib());
                        ++next_tenth;
                    }
                    if (now >= hard_deadline) {
                        say("FAILURE: watchdog: the soak did not finish within 300 s of its end; main pool %s, "
                            "PgBouncer pool %s; exiting (the server may keep the soak's ALTER SYSTEM settings)",
                            show_stats(mp.stats()).c_str(), show_stats(bp.stats()).c_str());
                        std::_Exit(3);
                    }
                }
            });

            std::vector<std::thread> workers;
            for (int i = 0; i < o.threads; ++i) {
                const bool direct_pool = i < main_threads;
                const std::string id = tag + std::to_string(i);
                const std::uint64_t seed = o.seed + 1000 + static_cast<std::uint64_t>(i);
                if (direct_pool)
                    workers.emplace_back(
                        [&, id, seed] { worker(mp, main_t, "main", id, seed, stop_at, o.pause_ms, abort); });
                else
                    workers.emplace_back(
                        [&, id, seed] { worker(bp, bouncer_t, "PgBouncer", id, seed, stop_at, o.pause_ms, abort); });
            }
            std::thread chaos_thread([&] {
                chaos c{o, ep, proxy, mp, stop_at, abort};
                ct = c.run();
            });
            chaos_thread.join();
            for (auto& w : workers) w.join();
            rss_end = rss_kib();
            say("chaos over; workers stopped. main pool %s; PgBouncer pool %s (opening: connects left parked)",
                show_stats(mp.stats()).c_str(), show_stats(bp.stats()).c_str());

            // Settle: the main pool's connections against the server's backends. First the
            // server must not count more than the pool (backends of closed connections exit a
            // moment later); then the pool validates each idle connection once, as an acquire
            // would (the chaos may have killed idle ones: the pool learns that only then), and
            // the two must agree exactly, also with the connector's count of open connections.
            std::this_thread::sleep_for(1200ms); // every idle connection is past ping_if_idle's window
            int server = -1;
            pqpool::pool_stats s{};
            const bool no_more = settle(20s, [&] {
                try {
                    (void)mp.maintain();
                } catch (const std::exception& e) {
                    say("maintain: %s: %s", type_name(e).c_str(), e.what());
                }
                s = mp.stats();
                server = server_backends_named(ep, ep.main_app);
                return s.in_use == 0 && s.opening == 0 && server <= static_cast<int>(s.size);
            });
            say("settled: main pool %s, server %d backends named %s", show_stats(s).c_str(), server,
                ep.main_app.c_str());
            v.check(no_more, "the server has more backends of the main pool (" + std::to_string(server) +
                                 ") than the pool has connections: " + show_stats(s));
            const auto validation_failed_before = mp.observer().count(pqpool::event::validation_failed);
            {
                std::vector<main_pool::lease> all;
                for (std::size_t i = 0; i < s.idle; ++i) {
                    try {
                        all.push_back(mp.acquire_for(10s));
                    } catch (const std::exception& e) {
                        v.check(false, "sweep: acquire failed: " + type_name(e) + ": " + e.what());
                        break;
                    }
                }
            }
            const auto replaced = mp.observer().count(pqpool::event::validation_failed) - validation_failed_before;
            const bool agree = settle(20s, [&] {
                s = mp.stats();
                server = server_backends_named(ep, ep.main_app);
                return s.in_use == 0 && s.opening == 0 && server == static_cast<int>(s.size) &&
                       main_counts->opened.load() - main_counts->gone() == s.size;
            });
            say("after one validation of each idle connection (%" PRIu64 " found dead and replaced): main pool %s, "
                "server %d, connector: %" PRIu64 " open",
                replaced, show_stats(s).c_str(), server, main_counts->opened.load() - main_counts->gone());
            v.check(agree, "the main pool (" + show_stats(s) + "), the server (" + std::to_string(server) +
                               ") and the connector (" +
                               std::to_string(main_counts->opened.load() - main_counts->gone()) + " open) disagree");

            // A caller that got a returned connection while it waited out a connect's backoff
            // leaves that connect parked (stats().opening, no socket yet): maintain() goes on
            // with it (and, pass_through keeping nothing idle, closes what it opens).
            pqpool::pool_stats bs{};
            int bclients = -1;
            const bool bagree = settle(20s, [&] {
                try {
                    (void)bp.maintain();
                } catch (const std::exception& e) {
                    say("maintain (PgBouncer pool): %s: %s", type_name(e).c_str(), e.what());
                }
                bs = bp.stats();
                bclients = bouncer_clients_named(ep, ep.bouncer_app);
                return bs.size == 0 && bclients == 0 && bouncer_counts->opened.load() == bouncer_counts->gone();
            });
            say("PgBouncer pool %s, PgBouncer's clients named %s: %d", show_stats(bs).c_str(), ep.bouncer_app.c_str(),
                bclients);
            v.check(bagree, "the PgBouncer pool (" + show_stats(bs) + ") and PgBouncer (" + std::to_string(bclients) +
                                " clients) disagree, or a connection is still open");

            finished = true;
            watchdog.join();
            say("main pool: size at most %zu (the overflow policy allows %zu), at most %zu callers waiting; "
                "PgBouncer pool: size at most %zu (sampled every 100 ms)",
                main_most, mp.overflow().max_size(), main_waiting_most, bouncer_most);
            v.check(main_most <= mp.overflow().max_size(), "the main pool grew beyond its overflow policy's bound");
            print_events("main", mp, *main_counts);
            print_events("PgBouncer", bp, *bouncer_counts);
        } // the pools, then the proxy, are gone

        int left = -1, bleft = -1;
        const bool gone = settle(20s, [&] {
            left = server_backends_named(ep, ep.main_app);
            bleft = bouncer_clients_named(ep, ep.bouncer_app);
            return left == 0 && bleft == 0;
        });
        say("after the pools were destroyed: server backends %d, PgBouncer clients %d; main connector opened %" PRIu64
            ", closed %" PRIu64 "; PgBouncer connector opened %" PRIu64 ", closed %" PRIu64,
            left, bleft, main_counts->opened.load(), main_counts->gone(), bouncer_counts->opened.load(),
            bouncer_counts->gone());
        v.check(gone, "connections outlive the pools: " + std::to_string(left) + " server backends, " +
                          std::to_string(bleft) + " PgBouncer clients");
        v.check(main_counts->opened.load() == main_counts->gone() &&
                    bouncer_counts->opened.load() == bouncer_counts->gone(),
                "the connectors opened more connections than were closed");
    } // the server's settings are reset

    // Figures.
    say("---- results (seed %" PRIu64 ") ----", o.seed);
    std::string actions;
    for (std::size_t i = 0; i < action_names.size(); ++i)
        actions += std::string(i ? ", " : "") + action_names[i] + " " + std::to_string(ct.done[i]);
    say("chaos: %s; %" PRIu64 " backends terminated; %" PRIu64 " children forked, %" PRIu64 " exited 0 in time",
        actions.c_str(), ct.terminated, ct.children, ct.children_ok);
    for (const auto& e : ct.errors) say("chaos error: %s", e.c_str());
    print_tally("main", main_t);
    print_tally("PgBouncer", bouncer_t);
    // run() hides a lost connection by retrying; a connection that a child corrupted (a
    // write on the parent's TLS socket) would be hidden too. So every failed attempt of the
    // work is listed, and a TLS record error among them fails the soak.
    std::uint64_t corrupted = 0;
    for (auto [name, t] : {std::pair{"main", &main_t}, std::pair{"PgBouncer", &bouncer_t}}) {
        std::lock_guard lock(t->m);
        for (const auto& [kind, n] : t->kinds) say("  failed %" PRIu64 "x: %s", n, kind.c_str());
        for (const auto& [msg, n] : t->losses) {
            say("  %s pool, an attempt lost its connection and run() retried it, %" PRIu64 "x: %s", name, n,
                msg.c_str());
            for (const char* sign :
                 {"bad record mac", "decryption failed", "wrong version number", "unexpected message"})
                if (msg.find(sign) != std::string::npos) corrupted += n;
        }
    }
    const std::size_t fds_after = pqpool::test::net::open_fd_count();
    say("descriptors: %zu before, %zu after", fds_before, fds_after);
    if (fds_after != fds_before) say("descriptors open now:\n%s", fd_list().c_str());
    const long rss_exit = rss_kib();
    std::string samples;
    long baseline = -1, late_max = rss_end;
    {
        std::lock_guard lock(rss_mutex);
        for (std::size_t i = 0; i < rss_samples.size(); ++i) {
            samples += (i ? ", " : "") + std::to_string(rss_samples[i].second / 1024) + " MiB @" +
                       std::to_string(static_cast<long>(rss_samples[i].first)) + "s";
            if (i == 0) baseline = rss_samples[i].second;
            if (i >= 4) late_max = std::max(late_max, rss_samples[i].second);
        }
    }
    say("RSS: %ld KiB at start, %ld KiB when the chaos began, %ld KiB when it ended, %ld KiB at exit; every tenth: %s",
        rss_start, rss_chaos_start, rss_end, rss_exit, samples.c_str());

    v.check(main_t.failed.load() == 0 && bouncer_t.failed.load() == 0,
            std::to_string(main_t.failed.load() + bouncer_t.failed.load()) + " idempotent operations failed");
    v.check(main_t.succeeded.load() > 0 && bouncer_t.succeeded.load() > 0, "a pool completed no operation");
    v.check(corrupted == 0, std::to_string(corrupted) + " attempts saw a corrupted TLS stream (retried, but a bug)");
    v.check(ct.child_failures.empty(), std::to_string(ct.child_failures.size()) + " children failed or hung");
    v.check(ct.errors.empty(), std::to_string(ct.errors.size()) + " chaos actions failed (see above)");
    v.check(fds_after == fds_before,
            "descriptors leaked: " + std::to_string(fds_before) + " before, " + std::to_string(fds_after) + " after");
    if (o.check_rss) {
        const long grown = baseline < 0 ? 0 : late_max - baseline;
        say("RSS check: the largest sample of the second half is %ld KiB above the first tenth's (tolerance %ld MiB)",
            grown, o.rss_tolerance_mb);
        v.check(baseline >= 0 && grown <= o.rss_tolerance_mb * 1024,
                "RSS grew by " + std::to_string(grown) + " KiB after the first tenth of the run");
    }
    if (v.problems.empty()) {
        say("PASS: no failed operation, no leaked connection or descriptor%s", o.check_rss ? ", RSS flat" : "");
        return 0;
    }
    for (const auto& p : v.problems) say("FAIL: %s", p.c_str());
    return 1;
}

} // namespace

int main(int argc, char** argv) {
    const options o = parse(argc, argv);
    const std::size_t fds_before = pqpool::test::net::open_fd_count();
    const long rss_start = rss_kib();
    try {
        return soak(o, fds_before, rss_start);
    } catch (const std::exception& e) {
        say("pqpool_soak: %s: %s", type_name(e).c_str(), e.what());
        return 2;
    }
}
