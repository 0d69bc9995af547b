# An overlay port that builds pqpool from this checkout:
#   vcpkg install pqpool --overlay-ports=<repo>/packaging/vcpkg/ports
# (a registry port would use vcpkg_from_github with a release tag instead).
# Not exercised in CI; the CMake package it installs is the one tests/install checks.
set(SOURCE_PATH "${CMAKE_CURRENT_LIST_DIR}/../../../..")

vcpkg_cmake_configure(
    SOURCE_PATH "${SOURCE_PATH}"
    OPTIONS
        -DPQPOOL_BUILD_TESTS=OFF
        -DPQPOOL_BUILD_EXAMPLES=OFF
        -DPQPOOL_BUILD_BENCHMARKS=OFF
        -DPQPOOL_INSTALL=ON
)
vcpkg_cmake_install()
vcpkg_cmake_config_fixup(PACKAGE_NAME pqpool CONFIG_PATH share/cmake/pqpool)
file(REMOVE_RECURSE "${CURRENT_PACKAGES_DIR}/debug")
file(INSTALL "${SOURCE_PATH}/LICENSE" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}" RENAME copyright)
