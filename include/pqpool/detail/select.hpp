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

template <class T>
inline constexpr bool is_option = std::is_same_v<T, std::remove_cvref_t<T>> &&
                                  (std::is_same_v<typename category_of<T>::type, connector_tag> ||
                                   std::is_same_v<typename category_of<T>::type, validation_tag> ||
                                   std::is_same_v<typename category_of<T>::type, recycling_tag> ||
                                   std::is_same_v<typename category_of<T>::type, overflow_tag> ||
                                   std::is_same_v<typename category_of<T>::type, retry_tag> ||
                                   std::is_same_v<typename category_of<T>::type, fork_safety_tag> ||
                                   std::is_same_v<typename category_of<T>::type, concurrency_tag> ||
                                   std::is_same_v<typename category_of<T>::type, observability_tag>);

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

// Keeps the chosen policy when it models its concept; otherwise the default,
// so a failed static_assert is the only error the user reads.
template <bool Ok, class Chosen, class Default>
using or_default = std::conditional_t<Ok, Chosen, Default>;

template <class DefaultConnector, class... Options>
struct select {
    static_assert((is_option<Options> && ...),
                  "pqpool::pool: an option is neither a pqpool policy nor a connector (it needs a 'category' member "
                  "naming a pqpool category tag, such as pqpool::validation_tag)");
    static_assert(in_category<connector_tag, Options...>::count <= 1,
                  "pqpool::pool: more than one connector named; name at most one");
    static_assert(in_category<validation_tag, Options...>::count <= 1,
                  "pqpool::pool: more than one validation policy named; name at most one per category");
    static_assert(in_category<recycling_tag, Options...>::count <= 1,
                  "pqpool::pool: more than one recycling policy named; name at most one per category");
    static_assert(in_category<overflow_tag, Options...>::count <= 1,
                  "pqpool::pool: more than one overflow policy named; name at most one per category");
    static_assert(in_category<retry_tag, Options...>::count <= 1,
                  "pqpool::pool: more than one retry policy named; name at most one per category");
    static_assert(in_category<fork_safety_tag, Options...>::count <= 1,
                  "pqpool::pool: more than one fork_safety policy named; name at most one per category");
    static_assert(in_category<concurrency_tag, Options...>::count <= 1,
                  "pqpool::pool: more than one concurrency policy named; name at most one per category");
    static_assert(in_category<observability_tag, Options...>::count <= 1,
                  "pqpool::pool: more than one observability policy named; name at most one per category");

    using connector_t = typename in_category<connector_tag, Options...>::template pick<DefaultConnector>;
    using validation_t = typename in_category<validation_tag, Options...>::template pick<validation::default_policy>;
    using recycling_t = typename in_category<recycling_tag, Options...>::template pick<recycling::default_policy>;
    using overflow_t = typename in_category<overflow_tag, Options...>::template pick<overflow::default_policy>;
    using retry_t = typename in_category<retry_tag, Options...>::template pick<retry::default_policy>;
    using fork_t = typename in_category<fork_safety_tag, Options...>::template pick<fork_safety::default_policy>;
    using concurrency_t = typename in_category<concurrency_tag, Options...>::template pick<concurrency::default_policy>;
    using observability_t =
        typename in_category<observability_tag, Options...>::template pick<observability::default_policy>;

    static_assert(connector<connector_t>,
                  "pqpool::pool: the connector does not model pqpool::connector (see pqpool/connector/concept.hpp)");
    static_assert(validation_policy<validation_t>,
                  "pqpool::pool: the validation policy does not model pqpool::validation_policy (see "
                  "pqpool/policies/validation.hpp)");
    static_assert(recycling_policy<recycling_t>,
                  "pqpool::pool: the recycling policy does not model pqpool::recycling_policy (see "
                  "pqpool/policies/recycling.hpp)");
    static_assert(overflow_policy<overflow_t>,
                  "pqpool::pool: the overflow policy does not model pqpool::overflow_policy (see "
                  "pqpool/policies/overflow.hpp)");
    static_assert(retry_policy<retry_t>,
                  "pqpool::pool: the retry policy does not model pqpool::retry_policy (see pqpool/policies/retry.hpp)");
    static_assert(fork_safety_policy<fork_t>,
                  "pqpool::pool: the fork_safety policy does not model pqpool::fork_safety_policy (see "
                  "pqpool/policies/fork_safety.hpp)");
    static_assert(concurrency_policy<concurrency_t>,
                  "pqpool::pool: the concurrency policy does not model pqpool::concurrency_policy (see "
                  "pqpool/policies/concurrency.hpp)");
    static_assert(observability_policy<observability_t, typename handle_of<connector_t>::type>,
                  "pqpool::pool: the observability policy does not model pqpool::observability_policy (see "
                  "pqpool/policies/observability.hpp)");

    using type = basic_pool<or_default<connector<connector_t>, connector_t, DefaultConnector>,
                            or_default<validation_policy<validation_t>, validation_t, validation::default_policy>,
                            or_default<recycling_policy<recycling_t>, recycling_t, recycling::default_policy>,
                            or_default<overflow_policy<overflow_t>, overflow_t, overflow::default_policy>,
                            or_default<retry_policy<retry_t>, retry_t, retry::default_policy>,
                            or_default<fork_safety_policy<fork_t>, fork_t, fork_safety::default_policy>,
                            or_default<concurrency_policy<concurrency_t>, concurrency_t, concurrency::default_policy>,
                            or_default<observability_policy<observability_t, typename handle_of<connector_t>::type>,
                                       observability_t, observability::default_policy>>;
};

} // namespace detail
} // namespace pqpool
