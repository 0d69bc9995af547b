#pragma once

// Turns an unordered list of options into one basic_pool<…> with a parameter
// per category. This is the only header that includes Boost.Hana: the public
// headers see plain types, and a user's mistake surfaces as one static_assert
// that names the category, never as a Hana error.

#include <pqpool/connector/concept.hpp>
#include <pqpool/policies/concurrency.hpp>
#include <pqpool/policies/fork_safety.hpp>
#include <pqpool/policies/observability.hpp>
#include <pqpool/policies/overflow.hpp>
#include <pqpool/policies/recycling.hpp>
#include <pqpool/policies/retry.hpp>
#include <pqpool/policies/validation.hpp>

#include <boost/hana/append.hpp>
#include <boost/hana/filter.hpp>
#include <boost/hana/front.hpp>
#include <boost/hana/integral_constant.hpp>
#include <boost/hana/length.hpp>
#include <boost/hana/tuple.hpp>
#include <boost/hana/type.hpp>

#include <type_traits>

namespace pqpool {

template <class Connector, class Validation, class Recycling, class Overflow, class Retry, class ForkSafety,
          class Concurrency, class Observability>
class basic_pool;

namespace detail {

namespace hana = boost::hana;

template <class T, class = void>
struct category_of {
    using type = void;
};
template <class T>
struct category_of<T, std::void_t<typename T::category>> {
    using type = typename T::category;
};

// The categories: the one table that the selection reads. A row per
// category: its tag, its default, whether a type models its concept (given
// the connector's handle type, which the observability concept needs), and
// the two errors a user can make in it. (A static_assert's message must be a
// literal, so each row spells its own; they live in the row, not in the
// selection.) A row's checks are instantiated once per selection, with
// Models true when the option appears twice, so that only that is reported.
template <class Tag>
struct category_row;

template <>
struct category_row<connector_tag> {
    template <class DefaultConnector>
    using default_type = DefaultConnector;
    template <class C, class Handle>
    static constexpr bool models = connector<C>;
    template <bool Once, bool Models>
    struct checks {
        static_assert(Once, "pqpool::pool: more than one connector named; name at most one");
        static_assert(
            Models, "pqpool::pool: the connector does not model pqpool::connector (see pqpool/connector/concept.hpp)");
    };
};

template <>
struct category_row<validation_tag> {
    template <class>
    using default_type = validation::default_policy;
    template <class P, class Handle>
    static constexpr bool models = validation_policy<P>;
    template <bool Once, bool Models>
    struct checks {
        static_assert(Once, "pqpool::pool: more than one validation policy named; name at most one per category");
        static_assert(Models, "pqpool::pool: the validation policy does not model "
                              "pqpool::validation_policy (see pqpool/policies/validation.hpp)");
    };
};

template <>
struct category_row<recycling_tag> {
    template <class>
    using default_type = recycling::default_policy;
    template <class P, class Handle>
    static constexpr bool models = recycling_policy<P>;
    template <bool Once, bool Models>
    struct checks {
        static_assert(Once, "pqpool::pool: more than one recycling policy named; name at most one per category");
        static_assert(Models, "pqpool::pool: the recycling policy does not model "
                              "pqpool::recycling_policy (see pqpool/policies/recycling.hpp)");
    };
};

template <>
struct category_row<overflow_tag> {
    template <class>
    using default_type = overflow::default_policy;
    template <class P, class Handle>
    static constexpr bool models = overflow_policy<P>;
    template <bool Once, bool Models>
    struct checks {
        static_assert(Once, "pqpool::pool: more than one overflow policy named; name at most one per category");
        static_assert(Models, "pqpool::pool: the overflow policy does not model "
                              "pqpool::overflow_policy (see pqpool/policies/overflow.hpp)");
    };
};

template <>
struct category_row<retry_tag> {
    template <class>
    using default_type = retry::default_policy;
    template <class P, class Handle>
    static constexpr bool models = retry_policy<P>;
    template <bool Once, bool Models>
    struct checks {
        static_assert(Once, "pqpool::pool: more than one retry policy named; name at most one per category");
        static_assert(Models, "pqpool::pool: the retry policy does not model pqpool::retry_policy (see "
                              "pqpool/policies/retry.hpp)");
    };
};

template <>
struct category_row<fork_safety_tag> {
    template <class>
    using default_type = fork_safety::default_policy;
    template <class P, class Handle>
    static constexpr bool models = fork_safety_policy<P>;
    template <bool Once, bool Models>
    struct checks {
        static_assert(Once, "pqpool::pool: more than one fork_safety policy named; name at most one per category");
        static_assert(Models, "pqpool::pool: the fork_safety policy does not model "
                              "pqpool::fork_safety_policy (see pqpool/policies/fork_safety.hpp)");
    };
};

template <>
struct category_row<concurrency_tag> {
    template <class>
    using default_type = concurrency::default_policy;
    template <class P, class Handle>
    static constexpr bool models = concurrency_policy<P>;
    template <bool Once, bool Models>
    struct checks {
        static_assert(Once, "pqpool::pool: more than one concurrency policy named; name at most one per category");
        static_assert(Models, "pqpool::pool: the concurrency policy does not model "
                              "pqpool::concurrency_policy (see pqpool/policies/concurrency.hpp)");
    };
};

template <>
struct category_row<observability_tag> {
    template <class>
    using default_type = observability::default_policy;
    template <class P, class Handle>
    static constexpr bool models = observability_policy<P, Handle>;
    template <bool Once, bool Models>
    struct checks {
        static_assert(Once, "pqpool::pool: more than one observability policy named; name at most one per category");
        static_assert(Models, "pqpool::pool: the observability policy does not model "
                              "pqpool::observability_policy (see pqpool/policies/observability.hpp)");
    };
};

// The rows, in basic_pool's parameter order (connector first: the others'
// checks need its handle type).
template <class... Tags>
struct category_list {};
using categories = category_list<connector_tag, validation_tag, recycling_tag, overflow_tag, retry_tag, fork_safety_tag,
                                 concurrency_tag, observability_tag>;

template <class Category, class List>
inline constexpr bool listed = false;
template <class Category, class... Tags>
inline constexpr bool listed<Category, category_list<Tags...>> = (std::is_same_v<Category, Tags> || ...);

template <class T>
inline constexpr bool is_option =
    std::is_same_v<T, std::remove_cvref_t<T>>&& listed<typename category_of<T>::type, categories>;

template <class Tag, class... Options>
struct in_category {
    static constexpr auto found = hana::filter(hana::tuple_t<Options...>, [](auto t) {
        return hana::bool_c<std::is_same_v<typename category_of<typename decltype(t)::type>::type, Tag>>;
    });
    static constexpr std::size_t count = decltype(hana::length(found))::value;
    // The named option, or Default when none is named (or, after a failed
    // static_assert, the first of several, so no second error follows).
    template <class Default>
    using pick = typename decltype(+hana::front(hana::append(found, hana::type_c<Default>)))::type;
};

// The connector's handle type, for the observability concept (whose events
// carry one); void* when the connector is not one, so that no second error follows.
template <class C, class = void>
struct handle_of {
    using type = void*;
};
template <class C>
struct handle_of<C, std::void_t<typename C::handle>> {
    using type = typename C::handle;
};

// One category of one selection: what was named (or the default), checked
// against the row; the default again when the check failed, so a failed
// static_assert is the only error the user reads.
template <class Tag, class DefaultConnector, class Handle, class... Options>
struct choice {
    using row = category_row<Tag>;
    using default_type = typename row::template default_type<DefaultConnector>;
    using named = typename in_category<Tag, Options...>::template pick<default_type>;
    static constexpr bool once = in_category<Tag, Options...>::count <= 1;
    static constexpr bool models = row::template models<named, Handle>;
    using checks = typename row::template checks<once, !once || models>;
    using type = std::conditional_t<models, named, default_type>;
};

// Every row's checks, as bases of the selection: a failed one makes the
// selection itself invalid, so that nothing built on it (a pool constructed
// from it, make_pool) adds an error of its own.
template <class... Checks>
struct all_checks : Checks... {};

// The connector's handle type in a selection, for the observability row.
template <class DefaultConnector, class... Options>
using selected_handle =
    typename handle_of<typename choice<connector_tag, DefaultConnector, void*, Options...>::named>::type;

// The selection over the rows of `List`: every row's checks as bases, and the
// pool of every row's choice.
template <class List, class Handle, class DefaultConnector, class... Options>
struct selection;
template <class... Tags, class Handle, class DefaultConnector, class... Options>
struct selection<category_list<Tags...>, Handle, DefaultConnector, Options...>
    : all_checks<typename choice<Tags, DefaultConnector, Handle, Options...>::checks...> {
    using type = basic_pool<typename choice<Tags, DefaultConnector, Handle, Options...>::type...>;
};

template <class DefaultConnector, class... Options>
struct select : selection<categories, selected_handle<DefaultConnector, Options...>, DefaultConnector, Options...> {
    static_assert((is_option<Options> && ...),
                  "pqpool::pool: an option is neither a pqpool policy nor a connector (it needs a 'category' member "
                  "naming a pqpool category tag, such as pqpool::validation_tag)");
};

} // namespace detail
} // namespace pqpool
