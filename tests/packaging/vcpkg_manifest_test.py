#!/usr/bin/env python3
"""Every JSON file in the checkout parses (strictly: no duplicate keys, no NaN), and the vcpkg
files follow vcpkg's conventions: the port (packaging/vcpkg/ports/pqpool) and the root
manifest (vcpkg.json, for building pqpool's own tests with vcpkg) carry version.hpp's version
and CMake's homepage, name their dependencies as the vcpkg ports are named (a boost-<library>
port for each Boost library pqpool's headers include, and no other), and the portfile does what
vcpkg asks of a header-only port.

Usage: vcpkg_manifest_test.py SOURCE_DIR (CTest passes the checkout)."""

import json
import os
import re
import sys
import unittest

SOURCE = os.path.abspath(sys.argv.pop(1) if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", ".."))
PORT = os.path.join(SOURCE, "packaging", "vcpkg", "ports", "pqpool")
# Build trees and results are not part of the checkout (.gitignore).
SKIPPED_TOP = re.compile(r"^(\.git|\.cache|build|build-.*|results)$")
MANIFEST_FIELDS = {"$schema", "name", "version", "version-semver", "version-date", "version-string", "port-version",
                   "description", "homepage", "license", "supports", "dependencies", "features",
                   "default-features", "builtin-baseline", "overrides", "documentation", "maintainers"}


def read(*path):
    with open(os.path.join(*path), encoding="utf-8") as f:
        return f.read()


def strict_json(text):
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise ValueError(f"duplicate keys {sorted(dup)}")
        return dict(pairs)

    def no_constant(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant)


def json_files():
    found = []
    for root, dirs, files in os.walk(SOURCE):
        if root == SOURCE:
            dirs[:] = [d for d in dirs if not SKIPPED_TOP.match(d)]
        found += [os.path.join(root, f) for f in files if f.endswith(".json")]
    return sorted(found)


def header_version():
    text = read(SOURCE, "include", "pqpool", "version.hpp")
    return ".".join(re.search(rf"^#define PQPOOL_VERSION_{p} (\d+)$", text, re.M).group(1)
                    for p in ("MAJOR", "MINOR", "PATCH"))


def boost_libraries_included():
    libs = set()
    for root, _, files in os.walk(os.path.join(SOURCE, "include")):
        for f in files:
            libs |= set(re.findall(r"#include <boost/([a-z0-9_]+)[/.]", read(root, f)))
    return libs


def dependency_names(deps):
    return [d if isinstance(d, str) else d["name"] for d in deps]


class JsonFiles(unittest.TestCase):
    def test_every_json_file_parses(self):
        files = json_files()
        for wanted in (os.path.join(SOURCE, "vcpkg.json"), os.path.join(PORT, "vcpkg.json")):
            self.assertIn(wanted, files)
        for path in files:
            with self.subTest(path=os.path.relpath(path, SOURCE)):
                strict_json(read(path))

    def test_the_strict_parser_refuses_what_json_does_not_allow(self):
        for bad in ('{"a": 1, "a": 2}', '{"a": NaN}', '{"a": 1,}', "{'a': 1}", '{"a": 1} trailing'):
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                strict_json(bad)


class Manifests(unittest.TestCase):
    def check_common(self, manifest, where):
        self.assertLessEqual(set(manifest), MANIFEST_FIELDS, f"{where}: fields vcpkg does not know")
        self.assertEqual(manifest["name"], "pqpool")
        self.assertEqual(manifest.get("version"), header_version(), f"{where}: not version.hpp's version")
        self.assertNotIn("port-version", manifest, f"{where}: port-version 0 is left out")
        homepage = re.search(r'HOMEPAGE_URL "([^"]+)"', read(SOURCE, "CMakeLists.txt")).group(1)
        self.assertEqual(manifest.get("homepage"), homepage, f"{where}: not CMake's HOMEPAGE_URL")
        self.assertEqual(manifest.get("license"), "MIT")
        self.assertEqual(manifest.get("supports"), "!windows", f"{where}: pqpool needs POSIX")
        self.assertTrue(manifest.get("description"))
        names = dependency_names(manifest["dependencies"])
        self.assertEqual(names, sorted(names), f"{where}: dependencies in vcpkg format-manifest's order")
        boost = {n for n in names if n.startswith("boost")}
        self.assertEqual(boost, {f"boost-{lib}" for lib in boost_libraries_included()},
                         f"{where}: a boost-<library> port for each Boost library the headers include")
        self.assertIn("libpq", names)
        self.assertIn("openssl", names, f"{where}: the headers include OpenSSL's (TLS facts)")
        return names

    def test_port_manifest(self):
        manifest = strict_json(read(PORT, "vcpkg.json"))
        names = self.check_common(manifest, "port")
        hosts = {d["name"] for d in manifest["dependencies"] if isinstance(d, dict) and d.get("host")}
        self.assertEqual(hosts, {"vcpkg-cmake", "vcpkg-cmake-config"})
        self.assertEqual(set(names) - hosts, {"libpq", "openssl"} | {n for n in names if n.startswith("boost-")},
                         "the port needs only what pqpool's headers include (no test frameworks)")

    def test_root_manifest_builds_the_tests(self):
        manifest = strict_json(read(SOURCE, "vcpkg.json"))
        self.assertIn("$schema", manifest)
        names = self.check_common(manifest, "vcpkg.json")
        self.assertIn("catch2", names, "the tests need Catch2 (3.x from vcpkg)")
        self.assertEqual(dependency_names(manifest["features"]["benchmarks"]["dependencies"]), ["benchmark"])


class Portfile(unittest.TestCase):
    def test_portfile_follows_vcpkg_conventions(self):
        portfile = read(PORT, "portfile.cmake")
        code = "\n".join(line for line in portfile.splitlines() if not line.lstrip().startswith("#"))
        self.assertRegex(code, r"^set\(VCPKG_BUILD_TYPE release\)", "header-only: release only")
        self.assertIn("vcpkg_cmake_install()", code)
        self.assertIn('vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE")', code)
        self.assertNotRegex(code, r"RENAME copyright", "vcpkg_install_copyright replaces file(INSTALL … RENAME)")
        self.assertIn('file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")',
                      code)
        self.assertIn("vcpkg_fixup_pkgconfig()", code)
        for option in ("PQPOOL_BUILD_TESTS", "PQPOOL_BUILD_EXAMPLES", "PQPOOL_BUILD_BENCHMARKS"):
            self.assertIn(f"-D{option}=OFF", code)
        # The config fixup names the folder pqpool's CMake installs its package into.
        config_path = re.search(r"vcpkg_cmake_config_fixup\(CONFIG_PATH (\S+)\)", code).group(1)
        cmake = read(SOURCE, "CMakeLists.txt")
        installed = re.search(r"set\(config_dir \$\{CMAKE_INSTALL_DATADIR\}/(\S+)\)", cmake).group(1)
        self.assertEqual(config_path, "share/" + installed)

    def test_usage_names_the_cmake_package_and_target(self):
        usage = read(PORT, "usage")
        self.assertIn("find_package(pqpool CONFIG REQUIRED)", usage)
        self.assertIn("target_link_libraries(main PRIVATE pqpool::pqpool)", usage)
        self.assertIn("add_library(pqpool::pqpool ALIAS pqpool)", read(SOURCE, "CMakeLists.txt"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
