#pragma once

// Runs a test's check in a forked child process.

#include "catch.hpp"

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

namespace pqpool::test {

// Runs `child` in a forked process; returns its exit code (its checks' verdict:
// 0 for success; 99 when it threw).
template <class F>
int in_child(F child) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int code = 1;
        try {
            code = child();
        } catch (...) {
            code = 99;
        }
        ::_exit(code);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    return WEXITSTATUS(status);
}

} // namespace pqpool::test
