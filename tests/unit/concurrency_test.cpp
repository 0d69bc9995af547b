// Concurrency policies.

#include "catch.hpp"
#include "test_pool.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <thread>
#include <vector>

using namespace pqpool;
using namespace pqpool::test;

TEST_CASE("concurrency::single_thread never waits: a full pool throws exhausted_error", "[concurrency]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::fixed, concurrency::single_thread> pool{fake_connector<>{s},
                                                                overflow::fixed{.size = 1, .wait = 10s}};
    auto l = pool.acquire();
    CHECK_THROWS_WITH(pool.acquire(), Catch::Contains("single_thread"));
    l.release();
    CHECK(pool.acquire().get()->id == 0);
    STATIC_REQUIRE(std::is_empty_v<concurrency::single_thread>);
}

TEST_CASE("concurrency::mutex: many threads, every cycle served, nothing lost", "[concurrency]") {
    auto s = std::make_shared<fake_server>();
    null_pool<overflow::bounded> pool{fake_connector<>{s}, overflow::bounded{.size = 2, .max_overflow = 2, .wait = 30s}};
    std::atomic<int> done{0}, handed_closed{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < 500; ++i) {
                auto l = pool.acquire();
                if (l.get()->closed) ++handed_closed;
                ++done;
            }
        });
    for (auto& t : threads) t.join();
    CHECK(done == 8 * 500);
    CHECK(handed_closed == 0);
    const auto st = pool.stats();
    CHECK(st.in_use == 0);
    CHECK(st.waiting == 0);
    CHECK(st.size <= 4);
    CHECK(static_cast<int>(st.size) == s->open());
    CHECK(s->misuse == 0);
}

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PQPOOL_TEST_UNDER_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define PQPOOL_TEST_UNDER_TSAN 1
#endif

// Not built under ThreadSanitizer: its own handler takes the child's abort and
// (with halt_on_error) exits with its own code instead of dying by SIGABRT.
// The g++ and ASan suites run it.
#if !defined(NDEBUG) && !defined(PQPOOL_TEST_UNDER_TSAN)
TEST_CASE("concurrency::single_thread: in debug builds, use from a second thread aborts", "[concurrency]") {
    // Run in a child process: the assertion aborts it.
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::alarm(10);
        auto s = std::make_shared<fake_server>();
        null_pool<overflow::fixed, concurrency::single_thread> pool{fake_connector<>{s}, overflow::fixed{.size = 2}};
        { auto first = pool.acquire(); } // this thread owns the pool now
        std::thread other([&] { auto l = pool.acquire(); });
        other.join();
        ::_exit(0); // not reached when the assertion works
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGABRT);
}
#endif
