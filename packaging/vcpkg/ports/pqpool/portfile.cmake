# pqpool is header-only: one (release) configuration is all there is to install.
set(VCPKG_BUILD_TYPE release)

# An overlay port that packages the checkout it lives in:
#   vcpkg install pqpool --overlay-ports=<checkout>/packaging/vcpkg/ports
# A port in a registry takes a release archive instead:
#   vcpkg_from_github(OUT_SOURCE_PATH SOURCE_PATH REPO pqpool/pqpool REF "v${VERSION}" SHA512 <archive's> HEAD_REF main)
get_filename_component(SOURCE_PATH "${CMAKE_CURRENT_LIST_DIR}/../../../.." ABSOLUTE)

vcpkg_cmake_configure(
    SOURCE_PATH "${SOURCE_PATH}"
    OPTIONS
        -DPQPOOL_BUILD_TESTS=OFF
        -DPQPOOL_BUILD_EXAMPLES=OFF
        -DPQPOOL_BUILD_BENCHMARKS=OFF
        -DPQPOOL_INSTALL=ON
)
vcpkg_cmake_install()
vcpkg_cmake_config_fixup(CONFIG_PATH share/cmake/pqpool)
vcpkg_fixup_pkgconfig()

# The license goes where vcpkg keeps it (share/pqpool/copyright), not in share/doc.
file(REMOVE_RECURSE "${CURRENT_PACKAGES_DIR}/share/doc")
file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")
vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE")
