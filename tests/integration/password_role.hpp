#pragma once

// The sandbox's password-authenticated role, given a password (and a connection
// limit) for one test, and the check that no piece of a password reaches a text.

#include "catch.hpp"
#include "connector_support.hpp"
#include "pg.hpp"

#include <string>

namespace pqpool::test {

// No 3-character piece of `password` in `text`; `conninfo` (which holds the
// password) must share none with it otherwise, or the check would prove nothing.
inline void check_no_password(const std::string& text, const std::string& password, const std::string& conninfo) {
    std::string rest = conninfo;
    for (std::size_t at = rest.find(password); at != std::string::npos; at = rest.find(password))
        rest.erase(at, password.size());
    CAPTURE(text, password);
    for (std::size_t i = 0; i + 3 <= password.size(); ++i) {
        const std::string piece = password.substr(i, 3);
        CAPTURE(piece);
        REQUIRE(rest.find(piece) == std::string::npos);
        CHECK(text.find(piece) == std::string::npos);
    }
}

// For one test: the password role takes `password` (it must hold no quote),
// and a connection limit when given (-1: none); the sandbox's password and no
// limit come back at scope exit (other tests use the role).
struct role_for_test {
    admin admin_conn;
    std::string password;
    explicit role_for_test(std::string pw, int connection_limit = -1) : password(std::move(pw)) {
        REQUIRE(set(password, connection_limit));
    }
    ~role_for_test() { CHECK(set(sandbox::get().password(), -1)); } // CHECK: never throws during unwinding
    role_for_test(const role_for_test&) = delete;
    role_for_test& operator=(const role_for_test&) = delete;
    bool set(const std::string& pw, int limit) {
        return connector::exec_ok(admin_conn.c, "ALTER ROLE " + sandbox::get().var("PQPOOL_TEST_PASSWORD_USER") +
                                                    " PASSWORD '" + pw + "' CONNECTION LIMIT " + std::to_string(limit));
    }
    // Keeps the password, changes the limit.
    bool limit(int connection_limit) { return set(password, connection_limit); }
};

} // namespace pqpool::test
