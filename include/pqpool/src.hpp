#pragma once

/// \file
/// Separate compilation, opt-in: define `PQPOOL_SEPARATE_COMPILATION` for every
/// translation unit of the program (e.g. `target_compile_definitions(app
/// PRIVATE PQPOOL_SEPARATE_COMPILATION)`) and include this header in exactly
/// one `.cpp` file of it, before any other pqpool header:
///
/// \code
/// // pqpool.cpp
/// #include <pqpool/src.hpp>
/// \endcode
///
/// That file then holds the libpq connector's functions and the default
/// pool, `pqpool::pool<>`, and the other translation units only declare them,
/// which saves each of them the time to compile those (see
/// docs/benchmarks.md). Pools of other compositions are still compiled where
/// they are used. Without the macro, pqpool is header-only and this file is
/// not needed.

#if !defined(PQPOOL_SEPARATE_COMPILATION)
#error                                                                                                                 \
    "pqpool/src.hpp is for separate compilation: define PQPOOL_SEPARATE_COMPILATION for every translation unit of the program (without it pqpool is header-only and needs no src.hpp)"
#endif
#if defined(PQPOOL_DECL)
#error "pqpool/src.hpp must come before any other pqpool header in its translation unit"
#endif

#define PQPOOL_SOURCE 1
#include <pqpool/pqpool.hpp>

#include <type_traits>

static_assert(std::is_same_v<pqpool::pool<>, pqpool::basic_pool<PQPOOL_DEFAULT_POOL_PARAMETERS>>,
              "pqpool: PQPOOL_DEFAULT_POOL_PARAMETERS no longer names pool<>");
template class pqpool::basic_pool<PQPOOL_DEFAULT_POOL_PARAMETERS>;
template class pqpool::detail::pool_core<PQPOOL_DEFAULT_POOL_PARAMETERS>;
