"""The console's vendored files are the pinned releases (VENDORED.md lists their sums), its pages carry no inline
script, and the pure helpers behind the pages handle hostile input."""

from __future__ import annotations

import hashlib
import re

from pipeline.api.console import STATIC
from pipeline.api.console.pages import safe_link, split_matchers

TEMPLATES = STATIC.parent / "templates"


def test_vendored_files_match_their_pinned_sums() -> None:
    table = (STATIC / "VENDORED.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \|.*\| `([0-9a-f]{64})` \|", table, re.MULTILINE)
    assert {name for name, _ in rows} == {"htmx-2.0.4.min.js", "htmx-ext-sse-2.2.2.js"}
    for name, digest in rows:
        assert hashlib.sha256((STATIC / name).read_bytes()).hexdigest() == digest, name
    assert "Zero-Clause BSD" in (STATIC / "LICENSE-htmx.txt").read_text()


def test_templates_have_no_inline_script_style_or_handlers() -> None:
    for template in TEMPLATES.glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), f"{template.name}: inline script"
        assert not re.search(r"\son[a-z]+=", text), f"{template.name}: inline event handler"
        assert not re.search(r"<style|\sstyle=", text), f"{template.name}: inline style"
        assert "|safe" not in text and "autoescape false" not in text, f"{template.name}: escaping turned off"


def test_runbook_links_are_never_script_urls() -> None:
    assert safe_link("https://wiki.example/runbook#lag") == "https://wiki.example/runbook#lag"
    assert safe_link("docs/operations.md#laghigh") == "docs/operations.md#laghigh"
    for hostile in ("javascript:alert(1)", " JavaScript:alert(1)", "data:text/html,<script>", "//evil.example/x"):
        assert safe_link(hostile) is None, hostile


def test_matchers_split_on_commas_outside_quotes() -> None:
    assert split_matchers('{exchange="okx", stream=~"book|trades"}') == ['exchange="okx"', 'stream=~"book|trades"']
    assert split_matchers('summary="a, b"\nseverity!="P4",') == ['summary="a, b"', 'severity!="P4"']
    assert split_matchers('x="quote \\" and, comma"') == ['x="quote \\" and, comma"']
    assert split_matchers("  ") == []
