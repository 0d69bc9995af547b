#pragma once

/// \file
/// `pqpool::pool<Options...>`: the pool a user names, policies in any order;
/// `pqpool::make_pool(connector, policies...)`: the same pool, its type deduced
/// from the policy objects, so that each policy is named once.

#include <pqpool/basic_pool.hpp>
#include <pqpool/connector/libpq.hpp>
#include <pqpool/detail/select.hpp>

#include <cstddef>
#include <type_traits>
#include <utility>

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
///
/// Name the type this way where it must be named (a class member, a function
/// parameter); elsewhere `make_pool` deduces it.
template <class... Options>
using pool = typename detail::select<libpq_connector, Options...>::type;

namespace detail {

// Does the pool type take each object make_pool was given, once? It does not
// when the selection failed (an object that is no policy, two of one category,
// one that does not model its concept): a static_assert in select has then
// said so, and make_pool constructs nothing, so that no second error follows.
template <class P, class Pool>
inline constexpr bool takes_policy = false;
template <class P, template <class...> class Pool, class... Params>
inline constexpr bool takes_policy<P, Pool<Params...>> = (std::is_same_v<P, Params> || ...);

template <class P, class... Ps>
inline constexpr std::size_t occurrences = (std::size_t{std::is_same_v<P, Ps>} + ... + 0);

template <class Pool, class... Options>
inline constexpr bool takes_each_once = ((takes_policy<Options, Pool> && occurrences<Options, Options...> == 1) && ...);

// The pool make_pool returns, and whether it took what it was given: a
// connector object passed first names its own type among the options (and
// must have become the pool's connector); anything else (a conninfo string or
// URI) is what a libpq_connector is made from.
template <class ConnectorArg, class... Policies>
struct deduced_pool {
    using type = pool<Policies...>;
    static constexpr bool selected = takes_each_once<type, Policies...>;
};
template <class ConnectorArg, class... Policies>
requires std::is_same_v<typename category_of<ConnectorArg>::type, connector_tag>
struct deduced_pool<ConnectorArg, Policies...> {
    using type = pool<ConnectorArg, Policies...>;
    static constexpr bool selected = takes_each_once<type, ConnectorArg, Policies...>;
};

// What make_pool returns when the selection failed (never part of a program):
// a type that adds no error of its own, not even "unused variable".
struct failed_selection {
    ~failed_selection() {}
};

} // namespace detail

/// Makes a pool whose policies are the types of the policy objects passed,
/// each named once:
///
/// \code
/// auto p = pqpool::make_pool("host=db sslmode=require",
///                            pqpool::validation::probe{},
///                            pqpool::overflow::fixed{.size = 20});
/// // decltype(p) is pqpool::pool<pqpool::validation::probe, pqpool::overflow::fixed>
/// \endcode
///
/// `connector` is a conninfo string or URI (for a `libpq_connector`), or a
/// connector object (e.g. a `libpq_connector` with setup statements), whose
/// type then becomes the pool's connector. The policies come in any order, at
/// most one per category; a category left out gets its default, as in
/// `pool<…>`. Naming two policies of one category, or passing an object that
/// is no policy, fails to compile with the same one-line message as
/// `pool<…>`. Throws what the pool's constructor throws (`config_error` for
/// numbers out of range or a bad conninfo).
// (The return type is deduced, not spelled: clang evaluates a spelled one
// while it resolves the call, and a failed selection then gives a second
// error, "no matching function", after the one that says why.)
template <class ConnectorArg, class... Policies>
auto make_pool(ConnectorArg&& connector, const Policies&... policies) {
    using deduced = detail::deduced_pool<std::remove_cvref_t<ConnectorArg>, Policies...>;
    if constexpr (deduced::selected)
        return typename deduced::type(std::forward<ConnectorArg>(connector), policies...);
    else
        return detail::failed_selection{}; // never part of a program: the selection failed, saying why
}

} // namespace pqpool

// pool<>'s parameters, in basic_pool's order: the one list that the explicit
// instantiations below and in src.hpp name (an alias cannot be named there).
#define PQPOOL_DEFAULT_POOL_PARAMETERS                                                                                 \
    ::pqpool::libpq_connector, ::pqpool::validation::default_policy, ::pqpool::recycling::default_policy,              \
        ::pqpool::overflow::default_policy, ::pqpool::retry::default_policy, ::pqpool::fork_safety::default_policy,    \
        ::pqpool::concurrency::default_policy, ::pqpool::observability::default_policy

#if defined(PQPOOL_SEPARATE_COMPILATION) && !defined(PQPOOL_SOURCE)
// Compiled once, by the translation unit that includes <pqpool/src.hpp>.
extern template class pqpool::basic_pool<PQPOOL_DEFAULT_POOL_PARAMETERS>;
extern template class pqpool::detail::pool_core<PQPOOL_DEFAULT_POOL_PARAMETERS>;
#endif
