#!/usr/bin/env python3
"""Checks packaging/conan (the recipe and its test_package) against conan-center-index's rules
for header-only recipes, without Conan: Conan cannot be installed here, so a small stand-in of
the `conan` module (the names the recipes import, behaving as Conan 2 documents them) is put in
sys.modules, the recipes are loaded through it, and each of their methods is run.

Usage: conan_recipe_test.py SOURCE_DIR (CTest passes the checkout)."""

import fnmatch
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import types
import unittest

SOURCE = os.path.abspath(sys.argv.pop(1) if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", ".."))
RECIPE_DIR = os.path.join(SOURCE, "packaging", "conan")


# --- The stand-in of the `conan` module ------------------------------------------------------

class ConanException(Exception):
    pass


class ConanInvalidConfiguration(ConanException):
    pass


class Setting(str):
    """A setting's value; sub-settings (compiler.version, compiler.cppstd) are attributes."""

    def __new__(cls, value, **subsettings):
        self = super().__new__(cls, value)
        for k, v in subsettings.items():
            setattr(self, k, v)
        return self


class Settings:
    def __init__(self, os="Linux", compiler="gcc", version="12", cppstd="20", arch="x86_64", build_type="Release"):
        self.os = Setting(os)
        self.arch = Setting(arch)
        self.build_type = Setting(build_type)
        self.compiler = Setting(compiler, version=Setting(version), cppstd=None if cppstd is None else Setting(cppstd))

    def get_safe(self, name):
        value = self
        for part in name.split("."):
            value = getattr(value, part, None)
            if value is None:
                return None
        return value


class CppInfo:
    def __init__(self):
        self.includedirs = ["include"]
        self.libdirs = ["lib"]
        self.bindirs = ["bin"]
        self.requires = []
        self.system_libs = []
        self.properties = {}

    def set_property(self, name, value):
        self.properties[name] = value


class Info:
    def __init__(self):
        self.cleared = False

    def clear(self):
        self.cleared = True


REQUIRES_TRAITS = {"headers", "libs", "build", "run", "visible", "transitive_headers", "transitive_libs", "test",
                   "package_id_mode", "options", "force", "override", "direct"}


class ConanFile:
    def __init__(self, settings=None, recipe_folder=None, version=None):
        self.settings = settings or Settings()
        self.recipe_folder = recipe_folder
        self.version = version
        self.cpp_info = CppInfo()
        self.info = Info()
        self.required = []
        self.layouts = []
        self.ran = []
        self.export_sources_folder = self.source_folder = self.package_folder = None

    @property
    def ref(self):
        return f"{self.name}/{self.version}"

    def requires(self, ref, **traits):
        unknown = set(traits) - REQUIRES_TRAITS
        if unknown:
            raise TypeError(f"requires() got unknown traits {unknown}")
        self.required.append((ref, traits))

    def run(self, command, env=None):
        self.ran.append((command, env))


def load(conanfile, path):
    return read(path)


def copy(conanfile, pattern, src, dst, keep_path=True, excludes=None):
    """As conan.tools.files.copy: fnmatch on paths relative to src ('*' crosses folders)."""
    copied = []
    for root, _, files in os.walk(src):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), src)
            if not fnmatch.fnmatch(rel, pattern) or any(fnmatch.fnmatch(rel, e) for e in excludes or ()):
                continue
            target = os.path.join(dst, rel if keep_path else name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(os.path.join(root, name), target)
            copied.append(target)
    return copied


def _std_less(lhs, rhs):
    def key(v):
        v = str(v).replace("gnu", "")
        return {"98": 1998}.get(v, 2000 + int(v))
    return key(lhs) < key(rhs)


def check_min_cppstd(conanfile, cppstd, gnu_extensions=False):
    """As conan.tools.build.check_min_cppstd in Conan 2 (an unset compiler.cppstd is refused)."""
    current = conanfile.settings.get_safe("compiler.cppstd")
    if current is None:
        raise ConanInvalidConfiguration("The compiler.cppstd is not defined for this configuration")
    if gnu_extensions and "gnu" not in current:
        raise ConanInvalidConfiguration("The cppstd GNU extension is required")
    if _std_less(current, cppstd):
        raise ConanInvalidConfiguration(
            f"Current cppstd ({current}) is lower than the required C++ standard ({cppstd}).")


def can_run(conanfile):
    return True


class Version:
    def __init__(self, v):
        self.parts = tuple(int(p) for p in str(v).split("."))

    def _cmp(self, other):
        other = other if isinstance(other, Version) else Version(other)
        n = max(len(self.parts), len(other.parts))
        a, b = self.parts + (0,) * (n - len(self.parts)), other.parts + (0,) * (n - len(other.parts))
        return (a > b) - (a < b)

    def __lt__(self, other):
        return self._cmp(other) < 0

    def __ge__(self, other):
        return self._cmp(other) >= 0


def basic_layout(conanfile, src_folder="."):
    conanfile.layouts.append(("basic_layout", src_folder))


def cmake_layout(conanfile, src_folder="."):
    conanfile.layouts.append(("cmake_layout", src_folder))
    conanfile.cpp = types.SimpleNamespace(build=types.SimpleNamespace(bindirs=["build/Release"]))


class CMake:
    def __init__(self, conanfile):
        self.conanfile = conanfile

    def configure(self):
        self.conanfile.ran.append(("cmake configure", None))

    def build(self):
        self.conanfile.ran.append(("cmake build", None))

    def install(self):
        self.conanfile.ran.append(("cmake install", None))


def install_standin():
    modules = {
        "conan": {"ConanFile": ConanFile},
        "conan.errors": {"ConanException": ConanException, "ConanInvalidConfiguration": ConanInvalidConfiguration},
        "conan.tools": {},
        "conan.tools.build": {"check_min_cppstd": check_min_cppstd, "can_run": can_run},
        "conan.tools.files": {"copy": copy, "load": load},
        "conan.tools.layout": {"basic_layout": basic_layout},
        "conan.tools.cmake": {"CMake": CMake, "cmake_layout": cmake_layout},
        "conan.tools.scm": {"Version": Version},
    }
    for name, members in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(members)
        sys.modules[name] = module


def load_recipe(path):
    spec = importlib.util.spec_from_file_location(f"recipe_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    classes = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, ConanFile) and c is not ConanFile]
    if len(classes) != 1:
        raise AssertionError(f"{path} defines {len(classes)} ConanFile classes; one expected")
    return module, classes[0]


# --- The checks ------------------------------------------------------------------------------

def read(*path):
    with open(os.path.join(*path), encoding="utf-8") as f:
        return f.read()


def header_version():
    text = read(SOURCE, "include", "pqpool", "version.hpp")
    return ".".join(re.search(rf"^#define PQPOOL_VERSION_{p} (\d+)$", text, re.M).group(1)
                    for p in ("MAJOR", "MINOR", "PATCH"))


def source_headers():
    root = os.path.join(SOURCE, "include")
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs if f.endswith(".hpp")}


def files_under(root):
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}


class Recipe(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        install_standin()
        cls.module, cls.recipe = load_recipe(os.path.join(RECIPE_DIR, "conanfile.py"))

    def make(self, **settings):
        conanfile = self.recipe(settings=Settings(**settings), recipe_folder=RECIPE_DIR)
        conanfile.set_version()
        return conanfile

    def test_metadata_is_filled_in(self):
        r = self.recipe
        self.assertEqual(r.name, "pqpool")
        self.assertEqual(r.package_type, "header-library")
        self.assertEqual(r.license, "MIT")
        self.assertTrue(r.description)
        self.assertIn("header-only", r.topics)
        self.assertEqual(tuple(r.settings), ("os", "arch", "compiler", "build_type"))
        self.assertTrue(r.no_copy_source)
        self.assertEqual(r.url, "https://github.com/conan-io/conan-center-index")
        cmake = read(SOURCE, "CMakeLists.txt")
        homepage = re.search(r'HOMEPAGE_URL "([^"]+)"', cmake).group(1)
        self.assertEqual(r.homepage, homepage, "the recipe's homepage differs from CMake's HOMEPAGE_URL")
        self.assertTrue(re.match(r'>=2\.\d+', self.module.required_conan_version))

    def test_version_comes_from_version_hpp(self):
        self.assertEqual(self.make().version, header_version())
        disagreeing = self.recipe(recipe_folder=RECIPE_DIR, version="9.9.9")
        with self.assertRaisesRegex(ConanException, "disagrees with version.hpp"):
            disagreeing.set_version()

    def test_exports_only_the_headers_and_the_license(self):
        conanfile = self.make()
        with tempfile.TemporaryDirectory() as export:
            conanfile.export_sources_folder = export
            conanfile.export_sources()
            want = {"LICENSE"} | {os.path.join("include", h) for h in source_headers()}
            self.assertEqual(files_under(export), want)

    def test_requirements_are_pinned_and_force_no_options(self):
        conanfile = self.make()
        conanfile.requirements()
        names = set()
        for ref, traits in conanfile.required:
            self.assertRegex(ref, r"^[a-z0-9_+.-]+/[0-9][0-9a-z.+-]*$", f"{ref}: a pinned name/version, no range")
            self.assertNotIn("options", traits, f"{ref}: options forced on a dependency")
            self.assertTrue(traits.get("transitive_headers"), f"{ref}: pqpool's headers include its headers")
            names.add(ref.split("/")[0])
        self.assertEqual(names, {"libpq", "boost", "openssl"})
        self.assertFalse(hasattr(self.recipe, "default_options"), "a header-only recipe has no options to set")
        self.assertFalse(hasattr(self.recipe, "configure"), "configure() would be the place options are forced")

    def test_validate_accepts_cpp20_on_posix(self):
        for settings in (dict(), dict(cppstd="gnu20"), dict(cppstd="23"), dict(compiler="clang", version="14"),
                         dict(os="Macos", compiler="apple-clang", version="15"), dict(os="FreeBSD", compiler="clang",
                                                                                    version="16")):
            with self.subTest(**settings):
                self.make(**settings).validate()

    def test_validate_refuses_an_older_standard(self):
        for cppstd in ("17", "gnu17", "14", "98"):
            with self.subTest(cppstd=cppstd), self.assertRaisesRegex(ConanInvalidConfiguration, r"\(20\)"):
                self.make(cppstd=cppstd).validate()
        with self.assertRaisesRegex(ConanInvalidConfiguration, "cppstd is not defined"):
            self.make(cppstd=None).validate()

    def test_validate_refuses_an_old_compiler(self):
        for compiler, version in (("gcc", "11"), ("clang", "13"), ("apple-clang", "14")):
            with self.subTest(compiler=compiler), \
                    self.assertRaisesRegex(ConanInvalidConfiguration, f"{compiler} {version} .*needs"):
                self.make(compiler=compiler, version=version).validate()

    def test_validate_refuses_windows_clearly(self):
        with self.assertRaisesRegex(ConanInvalidConfiguration, r"pqpool/\S+ needs POSIX .*Windows is not supported"):
            self.make(os="Windows", compiler="msvc", version="193").validate()

    def test_package_id_is_one_for_all_configurations(self):
        conanfile = self.make()
        conanfile.package_id()
        self.assertTrue(conanfile.info.cleared)

    def test_package_holds_the_headers_and_the_license_only(self):
        conanfile = self.make()
        with tempfile.TemporaryDirectory() as export, tempfile.TemporaryDirectory() as package:
            conanfile.export_sources_folder = conanfile.source_folder = export
            conanfile.package_folder = package
            conanfile.export_sources()
            conanfile.layout()
            conanfile.build()
            conanfile.package()
            want = {os.path.join("licenses", "LICENSE")} | {os.path.join("include", h) for h in source_headers()}
            self.assertEqual(files_under(package), want)
            self.assertEqual(read(package, "licenses", "LICENSE"), read(SOURCE, "LICENSE"))
        self.assertEqual(conanfile.ran, [], "a header-only recipe builds nothing (no CMake, no commands)")

    def test_package_info_declares_names_and_dependencies(self):
        conanfile = self.make()
        conanfile.requirements()
        conanfile.package_info()
        info = conanfile.cpp_info
        self.assertEqual(info.bindirs, [])
        self.assertEqual(info.libdirs, [])
        self.assertEqual(info.properties.get("cmake_file_name"), "pqpool")
        self.assertEqual(info.properties.get("cmake_target_name"), "pqpool::pqpool")
        self.assertEqual(info.properties.get("pkg_config_name"), "pqpool")
        required = {ref.split("/")[0] for ref, _ in conanfile.required}
        self.assertEqual({r.split("::")[0] for r in info.requires}, required,
                         "cpp_info.requires names each required package, and only those")
        self.assertEqual(conanfile.cpp_info.system_libs, ["pthread"])

    def test_system_libs_only_where_they_apply(self):
        for os_name, libs in (("Linux", ["pthread"]), ("FreeBSD", ["pthread"]), ("Macos", [])):
            conanfile = self.make(os=os_name, compiler="apple-clang" if os_name == "Macos" else "clang", version="15")
            conanfile.package_info()
            self.assertEqual(conanfile.cpp_info.system_libs, libs, os_name)

    def test_names_match_the_test_package_and_the_cmake_package(self):
        cmake = read(RECIPE_DIR, "test_package", "CMakeLists.txt")
        self.assertRegex(cmake, r"find_package\(pqpool REQUIRED CONFIG\)")
        self.assertIn("pqpool::pqpool", cmake)
        exported = read(SOURCE, "CMakeLists.txt")
        self.assertIn("add_library(pqpool::pqpool ALIAS pqpool)", exported)


class TestPackage(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        install_standin()
        _, cls.recipe = load_recipe(os.path.join(RECIPE_DIR, "test_package", "conanfile.py"))

    def test_requires_the_tested_reference_and_runs_its_program(self):
        conanfile = self.recipe()
        conanfile.tested_reference_str = "pqpool/" + header_version()
        self.assertEqual(conanfile.test_type, "explicit")
        conanfile.requirements()
        self.assertEqual(conanfile.required, [(conanfile.tested_reference_str, {})])
        conanfile.layout()
        conanfile.build()
        conanfile.test()
        self.assertEqual(conanfile.ran, [("cmake configure", None), ("cmake build", None),
                                         (os.path.join("build/Release", "test_package"), "conanrun")])
        self.assertTrue(os.path.exists(os.path.join(RECIPE_DIR, "test_package", "test_package.cpp")))


if __name__ == "__main__":
    unittest.main(verbosity=2)
