#pragma once

/// \file
/// pqpool's version. This is the one place it is written: CMake's `project()`,
/// the installed `pqpoolConfigVersion.cmake` and `pqpool.pc`, and the Conan
/// recipe all read it from here.

/// Incompatible API changes (while 0, a new minor version may break the API).
#define PQPOOL_VERSION_MAJOR 0
/// Features added compatibly.
#define PQPOOL_VERSION_MINOR 1
/// Fixes.
#define PQPOOL_VERSION_PATCH 0

/// The version as one number, `MAJOR * 10000 + MINOR * 100 + PATCH` (0.1.0 is 100),
/// for `#if PQPOOL_VERSION >= …`.
#define PQPOOL_VERSION (PQPOOL_VERSION_MAJOR * 10000 + PQPOOL_VERSION_MINOR * 100 + PQPOOL_VERSION_PATCH)
