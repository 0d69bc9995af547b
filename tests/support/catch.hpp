#pragma once

// Catch2 2.x (Debian) and 3.x (vcpkg, Conan) spell their header differently, and 3.x moved
// the matchers the tests use into Catch::Matchers (Contains became ContainsSubstring): the
// 2.x spellings are given for 3.x here, so one test source builds with either.
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>

#include <string>

namespace Catch {
inline Matchers::StringContainsMatcher Contains(const std::string& str, CaseSensitive cs = CaseSensitive::Yes) {
    return Matchers::ContainsSubstring(str, cs);
}
using Matchers::Predicate;
} // namespace Catch
#else
#include <catch2/catch.hpp>
#endif
