#pragma once

// Catch2 2.x (Debian) and 3.x (vcpkg, Conan) spell their header differently.
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
#else
#include <catch2/catch.hpp>
#endif
