#pragma once

// Runs a test's check in a forked child process.

#include "catch.hpp"

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

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

// Waits for the forked child `pid` and checks that it exited with 0; a child
// killed by a signal (the SIGALRM of one that hung) fails, naming the signal.
inline void check_child_succeeded(pid_t pid) {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    INFO((WIFSIGNALED(status) ? "child killed by signal " + std::to_string(WTERMSIG(status))
                              : "child exited " + std::to_string(WEXITSTATUS(status))));
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}

} // namespace pqpool::test
