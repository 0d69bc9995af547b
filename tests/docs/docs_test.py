#!/usr/bin/env python3
"""Checks what the README and docs/ promise about themselves: the quick start is two commands
that exist; every link to a file or a heading leads somewhere; the pool in five lines is the
program examples/quick_start.cpp that the tests run; the migration table covers the settings
of SQLAlchemy, HikariCP, pgxpool and psycopg_pool; every policy has a row in the catalog, and
the defaults it states are the headers'; and no text speaks of internal references (numbered
incidents, an issue's target).

Usage: docs_test.py SOURCE_DIR (CTest passes the checkout)."""

import os
import re
import sys
import unittest

SOURCE = os.path.abspath(sys.argv.pop(1) if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", ".."))
SKIPPED_TOP = re.compile(r"^(\.git|\.cache|build|build-.*|results)$")


def read(*path):
    with open(os.path.join(*path), encoding="utf-8") as f:
        return f.read()


def markdown_files():
    return ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(SOURCE, "docs"))
                                  if f.endswith(".md"))


def section(text, heading):
    """The text under a '## heading' up to the next heading of that level or higher."""
    m = re.search(rf"^(#+) {re.escape(heading)}\n(.*?)(?=^#{{1,{len('##')}}} |\Z)", text, re.M | re.S)
    if not m:
        raise AssertionError(f"no heading '{heading}'")
    return m.group(2)


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    s = re.sub(r"[`*_]", "", heading.strip().lower())
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def code_without_prose(text):
    return re.sub(r"//[^\n]*", "", text)


class Readme(unittest.TestCase):
    def setUp(self):
        self.readme = read(SOURCE, "README.md")

    def test_the_quick_start_is_two_commands_that_exist(self):
        block = re.search(r"```sh\n(.*?)```", section(self.readme, "Quick start"), re.S).group(1)
        commands = [line.split("#")[0].split()[0] for line in block.splitlines() if line.split("#")[0].strip()]
        self.assertEqual(commands, ["scripts/bench", "scripts/test"])
        for c in commands:
            self.assertTrue(os.access(os.path.join(SOURCE, c), os.X_OK), f"{c} is not an executable script")

    def test_the_pool_in_five_lines_is_examples_quick_start(self):
        block = re.search(r"```cpp\n(.*?)```", section(self.readme, "A pool in five lines"), re.S).group(1)
        example = read(SOURCE, "examples", "quick_start.cpp")
        policies = re.compile(r"pqpool::[a-z_:]+\{[^}]*\}")
        in_readme = policies.findall(code_without_prose(block))
        self.assertTrue(in_readme, "no policy object in the README's pool")
        self.assertEqual(in_readme, policies.findall(code_without_prose(example)))
        for call in ("pqpool::make_pool(", "pool.acquire()", "PQexec(conn.get(), ", "PQclear(r)"):
            self.assertIn(call, block)
            self.assertIn(call, example)

    def test_the_migration_table_covers_each_pool_s_settings(self):
        table = section(self.readme, "Coming from another pool")
        settings = {
            "SQLAlchemy": ["pool_size", "max_overflow", "pool_timeout", "pool_recycle", "pool_pre_ping",
                           "pool_reset_on_return"],
            "HikariCP": ["maximumPoolSize", "minimumIdle", "connectionTimeout", "idleTimeout", "maxLifetime",
                         "keepaliveTime", "leakDetectionThreshold"],
            "pgxpool": ["MaxConns", "MinConns", "MaxConnLifetime", "MaxConnLifetimeJitter", "MaxConnIdleTime",
                        "HealthCheckPeriod"],
            "psycopg_pool": ["min_size", "max_size", "timeout", "max_waiting", "max_lifetime", "max_idle",
                             "reconnect_timeout"],
        }
        rows = [line for line in table.splitlines() if line.startswith("| ")]
        for pool, names in settings.items():
            self.assertIn(f"**{pool}**", table)
            for name in names:
                with self.subTest(pool=pool, setting=name):
                    self.assertTrue(any(re.match(rf"\| (\*\*{pool}\*\* )?`{name}`", r) for r in rows),
                                    f"no row for {pool}'s {name}")

    def test_the_catalog_has_a_row_for_every_built_in_policy(self):
        catalog = section(self.readme, "The policy catalog")
        # Each category's table follows a paragraph that starts with its name in bold.
        parts = re.split(r"^\*\*(\w+)\*\*: ", catalog, flags=re.M)
        rows = dict(zip(parts[1::2], parts[2::2]))
        for header in os.listdir(os.path.join(SOURCE, "include", "pqpool", "policies")):
            text = read(SOURCE, "include", "pqpool", "policies", header)
            ns = re.search(r"^namespace (?!pqpool |detail )(\w+) \{", text, re.M).group(1)
            body = text[text.index(f"namespace {ns} {{"):]
            for policy in re.findall(r"^(?:struct|class) (\w+) \{", body, re.M):
                with self.subTest(category=ns, policy=policy):
                    self.assertTrue(re.search(rf"^\| `{policy}`( \*\*default\*\*)? \|", rows[ns], re.M),
                                    f"no row for {ns}::{policy} under **{ns}**")
            default = re.search(r"using default_policy = (\w+);", body).group(1)
            self.assertTrue(re.search(rf"^\| `{default}` \*\*default\*\* \|", rows[ns], re.M),
                            f"{ns}'s default is not marked")

    def test_the_catalog_s_defaults_are_the_headers(self):
        """Each '`field` value' in a catalog row's last column is what the policy's struct
        declares: `T field{N}`, `T field{std::chrono::unit{N}}` or `field = N`."""
        units = {"ns": 1, "µs": 1e3, "ms": 1e6, "s": 1e9, "min": 60e9, "h": 3600e9}
        chrono = {"nanoseconds": 1, "microseconds": 1e3, "milliseconds": 1e6, "seconds": 1e9, "minutes": 60e9,
                  "hours": 3600e9}
        # A field whose default is declared under another name (an optional left empty).
        declared_as = {("limits", "jitter"): "default_jitter"}
        catalog = section(self.readme, "The policy catalog")
        parts = re.split(r"^\*\*(\w+)\*\*: ", catalog, flags=re.M)
        rows = dict(zip(parts[1::2], parts[2::2]))
        headers = {}
        for header in os.listdir(os.path.join(SOURCE, "include", "pqpool", "policies")):
            text = read(SOURCE, "include", "pqpool", "policies", header)
            headers[re.search(r"^namespace (?!pqpool |detail )(\w+) \{", text, re.M).group(1)] = text
        checked = 0
        for ns, table in rows.items():
            for row in re.findall(r"^\| `(\w+)`[^\n]*\| ([^|\n]*) \|$", table, re.M):
                policy, defaults = row
                for field, value in re.findall(r"`(\w+)` (`[^`]+`|[^,`]+?)(?=, `|$| \()", defaults):
                    value = value.strip("`")
                    with self.subTest(policy=f"{ns}::{policy}", field=field):
                        text = headers[ns]
                        body = re.search(rf"^(?:struct|class) {policy} \{{(.*?)^\}};", text, re.M | re.S)
                        self.assertTrue(body, f"no struct {ns}::{policy}")
                        name = declared_as.get((policy, field), field)
                        decl = re.search(rf"^\s+(?:static constexpr )?([\w:<>]+) {name}(?:\{{(.*)\}}| = ([\w:]+));",
                                         body.group(1), re.M)
                        self.assertTrue(decl, f"{ns}::{policy} declares no default for '{field}'")
                        type_, braced, assigned = decl.groups()
                        if assigned is not None:
                            declared = assigned
                        else:
                            inner = re.fullmatch(r"std::chrono::(\w+)\{(\d+)\}", braced)
                            unit = chrono[inner.group(1)] if inner else chrono[type_.split("::")[-1]]
                            declared = float(inner.group(2) if inner else braced) * unit
                        m = re.fullmatch(r"(\d+) (ns|µs|ms|s|min|h)", value.strip())
                        if m:
                            self.assertEqual(declared, float(m.group(1)) * units[m.group(2)],
                                             f"the README says {field} {value}")
                        else:
                            self.assertEqual(str(declared), value.strip(), f"the README says {field} {value}")
                        checked += 1
        self.assertGreaterEqual(checked, 27, "the catalog's defaults were not found")


class Links(unittest.TestCase):
    def test_every_link_leads_to_a_file_and_heading_that_exist(self):
        for md in markdown_files():
            text = read(SOURCE, md)
            for target in re.findall(r"\]\(([^)\s]+)\)", text):
                if re.match(r"[a-z]+:", target):
                    continue  # a web address
                with self.subTest(file=md, link=target):
                    path, _, anchor = target.partition("#")
                    file = os.path.normpath(os.path.join(os.path.dirname(md), path)) if path else md
                    self.assertTrue(os.path.exists(os.path.join(SOURCE, file)), f"{md}: {target}: no {file}")
                    if anchor:
                        headings = re.findall(r"^#+ (.+)$", read(SOURCE, file), re.M)
                        self.assertIn(anchor, [slug(h) for h in headings], f"{md}: {target}: no such heading")

    def test_slugs_are_github_s(self):
        self.assertEqual(slug("Behind PgBouncer (transaction pooling)"), "behind-pgbouncer-transaction-pooling")
        self.assertEqual(slug("After `fork()`"), "after-fork")


class NoInternalReferences(unittest.TestCase):
    PATTERN = re.compile(r"\bincidents? (\d{3}|#\d)|\bthe issue's\b|\bissue #?\d+\b|\bthe (defects|audit) issue\b",
                         re.I)

    def test_no_text_speaks_of_internal_references(self):
        found = []
        for root, dirs, files in os.walk(SOURCE):
            if root == SOURCE:
                dirs[:] = [d for d in dirs if not SKIPPED_TOP.match(d)]
            if os.path.join("tests", "fuzz", "corpus") in root:
                continue
            for f in files:
                path = os.path.join(root, f)
                try:
                    text = read(path)
                except UnicodeDecodeError:
                    continue
                for n, line in enumerate(text.splitlines(), 1):
                    if self.PATTERN.search(line) and path != os.path.abspath(__file__):
                        found.append(f"{os.path.relpath(path, SOURCE)}:{n}: {line.strip()}")
        self.assertEqual(found, [])

    def test_the_pattern_finds_what_it_is_for(self):
        for text in ("Incidents 003 and 004: work", "meets the issue's target", "see issue 14", "incident 000"):
            self.assertRegex(text, self.PATTERN)
        for text in ("Each policy prevents an incident that teams", "issues a warning"):
            self.assertNotRegex(text, self.PATTERN)


if __name__ == "__main__":
    unittest.main(verbosity=2)
