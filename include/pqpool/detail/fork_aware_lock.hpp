#pragma once

// A lock for an observer's own state (a log stream, TLS facts) that fork()
// cannot leave locked forever. A std::mutex held by another thread at the
// moment of fork() stays locked in the child, where that thread does not
// exist, and the child's first event would hang (the pool rebuilds its own
// mutex after a fork, but cannot rebuild an observer's). This lock records
// the process that holds it: a child that finds it held by another process
// (its parent's thread, at the fork) takes it over. What that thread was
// writing may be half done in the child: a garbled log line, never a hang.
//
// A thread that finds it held by its own process sleeps (on a futex) until
// it is released: its holder may be blocked for as long as the stream it
// writes to (a stalled log pipe), and waiting threads must not burn a CPU
// each meanwhile. Cost: a getpid() per lock, on the event path only; an
// unlock makes a system call only when a thread may be asleep.

#include <atomic>

#include <sys/types.h>
#include <unistd.h>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

namespace pqpool::detail {

class fork_aware_lock {
public:
    void lock() noexcept {
        const pid_t me = ::getpid();
        for (;;) {
            pid_t holder = 0;
            if (holder_.compare_exchange_strong(holder, me, std::memory_order_acquire, std::memory_order_relaxed))
                return;
            // Held by another process: our parent, whose thread held it when
            // this child was forked. That thread will never unlock it here.
            if (holder != me) {
                if (holder_.compare_exchange_strong(holder, me, std::memory_order_acquire, std::memory_order_relaxed))
                    return;
                continue;
            }
            // Held by a thread of this process: sleep until an unlock. The
            // count and the holder are both sequentially consistent, so either
            // the unlock sees this sleeper counted (and wakes it), or the
            // sleep sees the lock released (and does not sleep).
            sleepers_.fetch_add(1, std::memory_order_seq_cst);
            sleep_while(holder);
            sleepers_.fetch_sub(1, std::memory_order_relaxed);
        }
    }
    void unlock() noexcept {
        holder_.store(0, std::memory_order_seq_cst);
        if (sleepers_.load(std::memory_order_seq_cst) != 0) wake_one();
    }

private:
    static_assert(sizeof(std::atomic<pid_t>) == sizeof(int) && std::atomic<pid_t>::is_always_lock_free,
                  "a futex word is an int");

    void sleep_while(pid_t holder) noexcept {
#if defined(__linux__)
        ::syscall(SYS_futex, reinterpret_cast<int*>(&holder_), FUTEX_WAIT_PRIVATE, holder, nullptr, nullptr, 0);
#else
        holder_.wait(holder, std::memory_order_relaxed);
#endif
    }
    void wake_one() noexcept {
#if defined(__linux__)
        ::syscall(SYS_futex, reinterpret_cast<int*>(&holder_), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
#else
        holder_.notify_one();
#endif
    }

    std::atomic<pid_t> holder_{0};
    std::atomic<int> sleepers_{0}; // threads that may be asleep in lock()
};

} // namespace pqpool::detail
