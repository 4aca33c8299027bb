"""The README's two commands and .ci/run must say the same thing."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_COMMAND = 'python3 -m venv .venv && . .venv/bin/activate && pip install -q -e ".[test,all]" && python -m pytest'
RUN_COMMAND = 'python3 -m venv .venv && . .venv/bin/activate && pip install -q -e ".[test,all]" && hfcn-bench compare'


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert TEST_COMMAND in readme
    assert RUN_COMMAND in readme
    assert TEST_COMMAND in ci.splitlines(), ".ci/run must run the README's test command verbatim"


def test_readme_cites_the_papers_and_the_data():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for needle in ("IEEE Access", "64064", "Pedraza", "92870W", "HFCN_DDTI_DIR"):
        assert needle in readme


def test_every_figure_and_result_file_the_readme_links_exists():
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(((?:docs|data)/[^)#\s]+)\)", readme)
    assert links, "the README links its figures and result files"
    missing = [p for p in links if not (ROOT / p).exists()]
    assert not missing, missing


def test_the_readme_stays_short_and_its_pages_link_what_exists():
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 210, "reference material belongs in docs/ pages"
    pages = sorted(set(re.findall(r"\]\((docs/[^)#\s]+\.md)", readme)))
    assert {"docs/op.md", "docs/systems.md", "docs/data.md", "docs/reproduce.md", "docs/results.md"} <= set(pages)
    missing = []
    for page in pages:
        text = (ROOT / page).read_text(encoding="utf-8")
        assert "../README.md" in text, f"{page} links back to the README"
        for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)", text):
            if "://" in link:
                continue
            if not ((ROOT / page).parent / link).exists():
                missing.append(f"{page}: {link}")
    assert not missing, missing


def test_result_files_hold_no_path_of_the_machine_they_ran_on():
    """docs/ holds small result files of runs made on other machines: data and run folders are
    written as placeholders (<data>, <holdout>, <runs>) or relative paths, never as absolute
    paths of a home, temp or work folder."""
    import re

    machine_path = re.compile(r"(?<![\w<.])/(?:work|tmp|home|root|Users|mnt|scratch)/[\w.-]")
    found = []
    for f in sorted((ROOT / "docs").rglob("*")):
        if f.is_file() and f.suffix in {".json", ".md", ".csv", ".log", ".txt"}:
            text = f.read_text(encoding="utf-8", errors="replace")
            hit = machine_path.search(text)
            if hit:
                found.append(f"{f.relative_to(ROOT)}: {text[hit.start() : hit.start() + 60]!r}")
    assert not found, "\n".join(found[:20])
