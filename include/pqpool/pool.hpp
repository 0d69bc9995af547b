#pragma once

/// \file
/// `pqpool::pool<Options...>`: the pool a user names, policies in any order.

#include <pqpool/basic_pool.hpp>
#include <pqpool/connector/libpq.hpp>
#include <pqpool/detail/select.hpp>

namespace pqpool {

/// A connection pool composed from `Options`: at most one policy per category
/// (validation, recycling, overflow, retry, fork_safety, concurrency,
/// observability) and at most one connector, in any order. A category left out
/// gets its default, so `pool<>` is a safe production pool over libpq.
/// `pool<A, B>` and `pool<B, A>` are the same type.
///
/// \code
/// using web_pool = pqpool::pool<pqpool::validation::probe, pqpool::overflow::fixed>;
/// web_pool p{"host=db sslmode=require", pqpool::overflow::fixed{.size = 20}};
/// auto conn = p.acquire();
/// PQexec(conn.get(), "SELECT 1");
/// \endcode
template <class... Options>
using pool = typename detail::select<libpq_connector, Options...>::type;

} // namespace pqpool
