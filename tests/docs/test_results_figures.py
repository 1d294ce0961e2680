"""Every figure the results pages quote is the one `mtlrun report` wrote into docs/results/: a rerun that
changes a report and leaves the page as it was breaks this test.

Two checks: a table row of a page whose label is a row of a report table (the copied tables) must have, cell by
cell, the report's numbers, rounded as the page rounds them, and the same significance stars; and every number
a page writes with three or more decimals, in a table or the text, must be one of its reports' numbers so
rounded (`0.913` for the report's 0.9133). Figures derived by hand (a difference in points, a ratio) have
fewer decimals and are not checked here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
# the results pages (and the README, relative to docs/) and the reports their figures come from
PAGES = {
    "results/index.md": ["results/report.md"],
    "results/multidigits_hard.md": ["results/multidigits_hard/report.md", "results/multidigits_hard/grouping/report.md"],
    "results/digits_av.md": ["results/digits_av/report.md", "results/digits_av_robust_gaussian/report.md",
                             "results/digits_av_robust_missing/report.md"],
    "results/text_tagging.md": ["results/text_tagging/report.md"],
    "results/scenes_det.md": ["results/scenes_det/report.md"],
    "results/mixture.md": ["results/mixture/report.md"],
    "../README.md": ["results/report.md", "results/text_tagging/report.md", "results/scenes_det/report.md",
                     "results/mixture/report.md"],
}
NUMBER = re.compile(r"[-+]?\d+\.\d+")


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header cells, rows of cells) of every markdown table."""
    found, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|\s*-", lines[i + 1]) and \
                (i == 0 or not lines[i - 1].startswith("|")):
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(cells(row))
            found.append((cells(line), rows))
    return found


def cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def header_key(cell: str) -> str:
    """A column's name without its direction arrow: `left/accuracy ↑` and `left/accuracy` are one column."""
    return cell.replace("↑", "").replace("↓", "").strip()


def rounds_to(quoted: str, value: str) -> bool:
    decimals = len(quoted.split(".")[1])
    return abs(float(quoted) - round(float(value), decimals)) < 10 ** -(decimals + 3) or \
        f"{float(value):.{decimals}f}" == f"{float(quoted):.{decimals}f}"


def same_cell(quoted: str, reported: str) -> bool:
    """The page's cell is the report's, each number rounded as the page writes it, stars alike."""
    q, r = NUMBER.findall(quoted), NUMBER.findall(reported)
    if ("*" in quoted) != ("*" in reported) or len(q) > len(r):
        return False
    if not q:
        return quoted.replace(" ", "") == reported.replace(" ", "")
    return all(rounds_to(a, b) for a, b in zip(q, r))


def report_tables(page: str):
    return [t for report in PAGES[page] for t in tables((DOCS / report).read_text())]


@pytest.mark.parametrize("page", PAGES)
def test_copied_table_rows_are_the_reports(page):
    reports, checked, wrong = report_tables(page), 0, []
    for header, rows in tables((DOCS / page).read_text()):
        columns = [header_key(h) for h in header]
        for row in rows:
            candidates = []
            for r_header, r_rows in reports:
                r_columns = [header_key(h) for h in r_header]
                match = next((r for r in r_rows if r[0] == row[0]), None)
                if match is not None and set(columns[1:]) <= set(r_columns[1:]):
                    candidates.append(dict(zip(r_columns, match)))
            if not candidates:
                continue  # not a copied row (a table of its own, e.g. the robustness summary)
            checked += 1
            if not any(all(same_cell(c, rep[col]) for col, c in zip(columns[1:], row[1:])) for rep in candidates):
                wrong.append(f"{page}: | {' | '.join(row)} | differs from the report's row")
    assert checked, f"{page}: no table row was found in its reports"
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("page", PAGES)
def test_every_precise_figure_is_a_reported_one(page):
    """A number with 3+ decimals anywhere on the page (tables, text) rounds from a number of its reports."""
    reported = {n.lstrip("+-") for report in PAGES[page] for n in NUMBER.findall((DOCS / report).read_text())}
    text = re.sub(r"^```.*?^```", "", (DOCS / page).read_text(), flags=re.S | re.M)  # commands, not figures
    quoted = {n.lstrip("+-") for n in NUMBER.findall(text) if len(n.split(".")[1]) >= 3}
    stale = sorted(q for q in quoted if not any(rounds_to(q, r) for r in reported))
    assert not stale, f"{page}: figures that no report of {PAGES[page]} holds: {stale}"


def test_the_checks_catch_a_stale_figure():
    assert same_cell("0.9837 ± 0.0020", "0.9837 ± 0.0020") and same_cell("+1.06 (p=0.003)*", "+1.0563 (p=0.003, n=5)*")
    assert not same_cell("0.9838 ± 0.0020", "0.9837 ± 0.0020")
    assert not same_cell("+1.06 (p=0.003)", "+1.0563 (p=0.003, n=5)*")  # a lost significance star
    assert rounds_to("0.913", "0.9133") and not rounds_to("0.914", "0.9133")
