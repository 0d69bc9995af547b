#pragma once

// A lock for an observer's own state (a log stream, TLS facts) that fork()
// cannot leave locked forever. A std::mutex held by another thread at the
// moment of fork() stays locked in the child, where that thread does not
// exist, and the child's first event would hang (the pool rebuilds its own
// mutex after a fork, but cannot rebuild an observer's). This lock records
// the process that holds it: a child that finds it held by another process
// (its parent's thread, at the fork) takes it over. What that thread was
// writing may be half done in the child: a garbled log line, never a hang.
// Cost: a getpid() per lock, on the event path only.

#include <atomic>
#include <thread>

#include <sys/types.h>
#include <unistd.h>

namespace pqpool::detail {

class fork_aware_lock {
public:
    void lock() noexcept {
        const pid_t me = ::getpid();
        for (;;) {
            pid_t holder = 0;
            if (holder_.compare_exchange_weak(holder, me, std::memory_order_acquire, std::memory_order_relaxed))
                return;
            // Held by another process: our parent, whose thread held it when
            // this child was forked. That thread will never unlock it here.
            if (holder != 0 && holder != me &&
                holder_.compare_exchange_strong(holder, me, std::memory_order_acquire, std::memory_order_relaxed))
                return;
            std::this_thread::yield();
        }
    }
    void unlock() noexcept { holder_.store(0, std::memory_order_release); }

private:
    std::atomic<pid_t> holder_{0};
};

} // namespace pqpool::detail
