#pragma once

/// \file
/// Everything pqpool offers.

#include <pqpool/basic_pool.hpp>
#include <pqpool/connection_info.hpp>
#include <pqpool/connector/concept.hpp>
#include <pqpool/connector/libpq.hpp>
#include <pqpool/error.hpp>
#include <pqpool/fwd.hpp>
#include <pqpool/lease.hpp>
#include <pqpool/policies/concurrency.hpp>
#include <pqpool/policies/fork_safety.hpp>
#include <pqpool/policies/observability.hpp>
#include <pqpool/policies/overflow.hpp>
#include <pqpool/policies/recycling.hpp>
#include <pqpool/policies/retry.hpp>
#include <pqpool/policies/validation.hpp>
#include <pqpool/pool.hpp>
#include <pqpool/stats.hpp>
#include <pqpool/version.hpp>
