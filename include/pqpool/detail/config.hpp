#pragma once

// Header-only (the default) or separate compilation (opt-in, as Boost.Asio
// offers): with PQPOOL_SEPARATE_COMPILATION defined for every translation unit
// of a program, and <pqpool/src.hpp> included by exactly one of them, what is
// not a template (the libpq connector's functions) and the default pool,
// pqpool::pool<>, are compiled once, in that one, instead of in every
// translation unit that uses a pool.
//
// PQPOOL_DECL goes before the definition of each such function, outside its
// class: `inline` when header-only; nothing when compiled separately.
// PQPOOL_DEFINITIONS says whether this translation unit sees those
// definitions (header-only: all of them; separately: only src.hpp's).

#if defined(PQPOOL_SEPARATE_COMPILATION)
#define PQPOOL_DECL
#if defined(PQPOOL_SOURCE)
#define PQPOOL_DEFINITIONS 1
#else
#define PQPOOL_DEFINITIONS 0
#endif
#else
#define PQPOOL_DECL inline
#define PQPOOL_DEFINITIONS 1
#endif
