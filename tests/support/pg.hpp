#pragma once

// Small libpq helpers shared by the integration tests.

#include "sandbox.hpp"

#include <pqpool/connector/libpq.hpp>

#include <libpq-fe.h>

#include <chrono>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>

namespace pqpool::test {

// Runs `sql`; returns the first column of the first row ("" when none).
// Throws with the server's message when the statement fails.
inline std::string query(PGconn* c, const std::string& sql) {
    PGresult* r = PQexec(c, sql.c_str());
    const auto status = PQresultStatus(r);
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
        std::string msg = PQresultErrorMessage(r);
        PQclear(r);
        throw std::runtime_error("query failed: " + sql + ": " + msg);
    }
    std::string v = status == PGRES_TUPLES_OK && PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
    PQclear(r);
    return v;
}

// A name no other test run uses; valid as an SQL identifier and an application_name.
inline std::string unique_name(const char* prefix) {
    static std::mt19937_64 rng{std::random_device{}()};
    return std::string(prefix) + "_" + std::to_string(rng() % 1000000000);
}

// A connector whose connections carry `app` as application_name, so the
// server's view (pg_stat_activity) can be matched with the pool's.
inline libpq_connector named(const std::string& conninfo, const std::string& app) {
    return libpq_connector{conninfo, {.setup = {"SET application_name = '" + app + "'"}}};
}

// A connection of our own, outside any pool, to ask the server.
struct admin {
    PGconn* c;
    admin() : c(PQconnectdb(sandbox::get().tls().c_str())) {
        if (PQstatus(c) != CONNECTION_OK) throw std::runtime_error(PQerrorMessage(c));
    }
    admin(const admin&) = delete;
    admin& operator=(const admin&) = delete;
    ~admin() { PQfinish(c); }

    int backends_named(const std::string& app) {
        return std::stoi(query(c, "SELECT count(*) FROM pg_stat_activity WHERE application_name = '" + app + "'"));
    }
    // The server drops a closed backend from pg_stat_activity a moment after
    // the client's Terminate: poll (bounded, about 5 s) until it shows `expected`.
    int settled_count(const std::string& app, int expected) {
        int n = backends_named(app);
        for (int i = 0; i < 250 && n != expected; ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds{20});
            n = backends_named(app);
        }
        return n;
    }
};

} // namespace pqpool::test
