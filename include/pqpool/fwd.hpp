#pragma once

/// \file
/// Forward declarations of pqpool's public names.

namespace pqpool {

struct connector_tag;
struct validation_tag;
struct recycling_tag;
struct overflow_tag;
struct retry_tag;
struct fork_safety_tag;
struct concurrency_tag;
struct observability_tag;

struct pool_stats;
class error;
class config_error;
class timeout_error;
class exhausted_error;
class closed_error;
class connect_error;

class libpq_connector;
struct libpq_options;

template <class Core>
class lease;

template <class Connector, class Validation, class Recycling, class Overflow, class Retry, class ForkSafety,
          class Concurrency, class Observability>
class basic_pool;

} // namespace pqpool
