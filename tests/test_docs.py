"""Docs that live in the project.

Docstrings, comments and docs cite the paper (section, table, equation) and
``docs/architecture.md``, never a document outside the repository; every
``docs/architecture.md#anchor`` link lands on a heading of that file (GitHub's anchor rules).
"""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
#: Where docstrings, comments and docs live (tests too: their docstrings cite the same facts).
SCANNED = ("deeplab_tf", "benchmarks", "examples", "docs", "tests", "weights", "README.md")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".ipynb", ".json", ".proto", ".txt", ".cfg"}
#: The outside document once cited as "S-P-E-C section N" (spelled out so this file does not
#: match itself). A whole word: generated names such as caffe_pb2's ``_PARAMSPEC`` do not count.
OUTSIDE_DOC = re.compile(r"\b" + "SP" + r"EC\b")
#: ``docs/architecture.md#anchor`` from anywhere, ``architecture.md#anchor`` from docs/.
ANCHOR_LINK = re.compile(r"architecture\.md#([\w-]+)")
#: ``[text](#anchor)`` inside docs/architecture.md itself.
LOCAL_LINK = re.compile(r"\]\(#([\w-]+)\)")


def text_files():
    """Text files under :data:`SCANNED`, except this one (its patterns would match)."""
    this = pathlib.Path(__file__).resolve()
    for name in SCANNED:
        path = ROOT / name
        paths = [path] if path.is_file() else sorted(path.rglob("*"))
        for p in paths:
            if p.is_file() and p.suffix in TEXT_SUFFIXES and p.resolve() != this:
                yield p


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading (github-slugger, without duplicate suffix)."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)  # code spans keep their text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def headings_anchors(markdown: str) -> set[str]:
    """Anchors of every ATX heading outside code fences, with GitHub's ``-1``, ``-2`` suffixes."""
    anchors, seen, fenced = set(), {}, False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        m = re.match(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if fenced or not m:
            continue
        base = github_anchor(m.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        anchors.add(base if count == 0 else f"{base}-{count}")
    return anchors


def test_github_anchor_rules():
    assert github_anchor("Caffe rounding rules") == "caffe-rounding-rules"
    assert github_anchor("VGG-16 heads: LargeFOV, ASPP-S, ASPP-L") == (
        "vgg-16-heads-largefov-aspp-s-aspp-l"
    )
    assert github_anchor("Multi-scale (MSC) training") == "multi-scale-msc-training"
    assert github_anchor("In `deeplab_tf`: facts") == "in-deeplab_tf-facts"
    assert headings_anchors("# A\n## A\n```\n# not a heading\n```\n### B.\n") == {"a", "a-1", "b"}


def test_no_citations_of_an_outside_document():
    found = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in text_files()
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1)
        if OUTSIDE_DOC.search(line)
    ]
    assert not found, (
        "cite the paper (section/table/equation) or docs/architecture.md#anchor instead of a "
        "document outside the repository:\n" + "\n".join(found)
    )


def test_architecture_links_resolve():
    anchors = headings_anchors(ARCHITECTURE.read_text(encoding="utf-8"))
    links, broken = 0, []
    for p in text_files():
        pattern = LOCAL_LINK if p == ARCHITECTURE else ANCHOR_LINK
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
            for anchor in pattern.findall(line):
                links += 1
                if anchor not in anchors:
                    broken.append(f"{p.relative_to(ROOT)}:{i}: #{anchor}")
    assert links, "no links to docs/architecture.md headings found"
    assert not broken, (
        "links to headings that docs/architecture.md does not have:\n"
        + "\n".join(broken)
        + "\nheadings: "
        + ", ".join(sorted(anchors))
    )
