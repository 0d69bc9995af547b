# Conan 2 recipe for pqpool (header-only). From the repository root:
#   conan create packaging/conan --build=missing
# Not exercised in CI (no Conan Center access there); the CMake package it
# installs is the one tests/install builds a consumer against.
import os

from conan import ConanFile
from conan.tools.cmake import CMake, CMakeToolchain, CMakeDeps, cmake_layout
from conan.tools.files import copy


class PqpoolConan(ConanFile):
    name = "pqpool"
    version = "0.1.0"
    description = "Header-only C++20 PostgreSQL (libpq) connection pools composed from compile-time policies"
    license = "MIT"
    topics = ("postgresql", "libpq", "connection-pool", "header-only")
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    no_copy_source = True

    def export_sources(self):
        root = os.path.join(self.recipe_folder, "..", "..")
        for pattern in ("include/*", "cmake/*", "CMakeLists.txt", "tests/*", "examples/*", "benchmarks/*", "scripts/*"):
            copy(self, pattern, root, self.export_sources_folder)

    def requirements(self):
        self.requires("libpq/[>=14 <17]")
        self.requires("boost/[>=1.74]", options={"header_only": True})

    def layout(self):
        cmake_layout(self)

    def generate(self):
        CMakeDeps(self).generate()
        tc = CMakeToolchain(self)
        tc.cache_variables["PQPOOL_BUILD_TESTS"] = False
        tc.cache_variables["PQPOOL_BUILD_EXAMPLES"] = False
        tc.cache_variables["PQPOOL_BUILD_BENCHMARKS"] = False
        tc.cache_variables["PQPOOL_INSTALL"] = True
        tc.generate()

    def build(self):
        CMake(self).configure()

    def package(self):
        CMake(self).install()

    def package_id(self):
        self.info.clear()

    def package_info(self):
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        self.cpp_info.set_property("cmake_file_name", "pqpool")
        self.cpp_info.set_property("cmake_target_name", "pqpool::pqpool")
        self.cpp_info.requires = ["libpq::libpq", "boost::headers"]
        self.cpp_info.system_libs = ["pthread"]
