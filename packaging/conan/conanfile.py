# Conan 2 recipe for pqpool, a header-only library, after conan-center-index's header-only
# template. From the repository root:
#   conan create packaging/conan --build=missing
# It packages the checkout it lives in (its version comes from include/pqpool/version.hpp).
# tests/packaging/conan_recipe_test.py runs its methods in CTest against a stand-in of the
# `conan` module, and CTest builds test_package/ against an installed pqpool.
import os
import re

from conan import ConanFile
from conan.errors import ConanException, ConanInvalidConfiguration
from conan.tools.build import check_min_cppstd
from conan.tools.files import copy, load
from conan.tools.layout import basic_layout
from conan.tools.scm import Version

required_conan_version = ">=2.0.9"


class PqpoolConan(ConanFile):
    name = "pqpool"
    description = "Header-only C++20 PostgreSQL (libpq) connection pools composed from compile-time policies"
    license = "MIT"
    url = "https://github.com/conan-io/conan-center-index"
    homepage = "https://github.com/pqpool/pqpool"
    topics = ("postgresql", "libpq", "connection-pool", "header-only")
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    no_copy_source = True

    @property
    def _min_cppstd(self):
        return 20

    # The compilers pqpool's CI builds with (-std=c++20, concepts, designated initializers).
    @property
    def _compilers_minimum_version(self):
        return {"gcc": "12", "clang": "14", "apple-clang": "15"}

    @property
    def _checkout(self):
        return os.path.join(self.recipe_folder, "..", "..")

    def set_version(self):
        header = load(self, os.path.join(self._checkout, "include", "pqpool", "version.hpp"))
        parts = []
        for part in ("MAJOR", "MINOR", "PATCH"):
            found = re.search(rf"^#define PQPOOL_VERSION_{part} (\d+)$", header, re.MULTILINE)
            if not found:
                raise ConanException(f"pqpool: no '#define PQPOOL_VERSION_{part} <number>' in version.hpp")
            parts.append(found.group(1))
        version = ".".join(parts)
        if self.version and str(self.version) != version:
            raise ConanException(f"pqpool: --version {self.version} disagrees with version.hpp ({version})")
        self.version = version

    def export_sources(self):
        copy(self, "LICENSE", self._checkout, self.export_sources_folder)
        copy(self, "*.hpp", os.path.join(self._checkout, "include"),
             os.path.join(self.export_sources_folder, "include"))

    def layout(self):
        basic_layout(self)

    def requirements(self):
        # pqpool's public headers include libpq-fe.h, Boost.Hana's headers and (for TLS facts) OpenSSL's.
        self.requires("libpq/15.5", transitive_headers=True)
        self.requires("boost/1.83.0", transitive_headers=True)
        self.requires("openssl/3.3.2", transitive_headers=True)

    def package_id(self):
        self.info.clear()

    def validate(self):
        if self.settings.os == "Windows":
            raise ConanInvalidConfiguration(
                f"{self.ref} needs POSIX (fork and pthread_atfork, poll, dup2): Windows is not supported")
        check_min_cppstd(self, self._min_cppstd)
        minimum_version = self._compilers_minimum_version.get(str(self.settings.compiler), False)
        if minimum_version and Version(self.settings.compiler.version) < minimum_version:
            raise ConanInvalidConfiguration(
                f"{self.ref} requires C++{self._min_cppstd}, which {self.settings.compiler} "
                f"{self.settings.compiler.version} does not support well enough (needs {minimum_version} or newer)")

    def build(self):
        pass  # header-only

    def package(self):
        copy(self, "LICENSE", self.source_folder, os.path.join(self.package_folder, "licenses"))
        copy(self, "*.hpp", os.path.join(self.source_folder, "include"), os.path.join(self.package_folder, "include"))

    def package_info(self):
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        self.cpp_info.set_property("cmake_file_name", "pqpool")
        self.cpp_info.set_property("cmake_target_name", "pqpool::pqpool")
        self.cpp_info.set_property("pkg_config_name", "pqpool")
        self.cpp_info.requires = ["libpq::libpq", "boost::headers", "openssl::ssl", "openssl::crypto"]
        if self.settings.os in ["Linux", "FreeBSD"]:
            self.cpp_info.system_libs = ["pthread"]
