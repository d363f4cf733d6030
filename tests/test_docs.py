"""Every ```python block of README.md and docs/*.md runs (each file's blocks in order, in one fresh namespace).

Blocks fenced as ```python slow run only under `-m slow` (together with the file's other blocks, which they may
depend on). Pages added to docs/ by anyone are picked up automatically. To keep the default suite fast, the
pages share one fresh Python process (one JAX import, shared compilation cache) but each page runs in its own
namespace and in its own empty temporary folder, never the repository root (as a user runs them: the data the
examples need must come with the installed package); a failing page is reported with its traceback.
"""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FENCE = re.compile(r"^```python([^\n`]*)\n(.*?)^```\s*$", re.DOTALL | re.MULTILINE)

_RUNNER = r"""
import json, os, sys, tempfile, traceback
pages = json.load(open(sys.argv[1]))
failed = {}
for page, blocks in pages.items():
    # an empty folder per page (passed in the environment: pages may read sys.argv, as scripts do)
    os.chdir(tempfile.mkdtemp(prefix=page.replace(os.sep, "_") + "-", dir=os.environ["CARKINETICS_DOCS_PAGES"]))
    namespace = {"__name__": "__main__"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{page} (python block {i + 1})", "exec"), namespace)
        except BaseException:
            failed[page] = traceback.format_exc()[-4000:]
            break
    print(f"{page}: {'FAILED' if page in failed else 'ok'}", flush=True)
    import matplotlib.pyplot as plt
    plt.close("all")
json.dump(failed, open(sys.argv[2], "w"))
"""


def _pages():
    return [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def extract_blocks(text: str) -> list[tuple[str, bool]]:
    """(code, is_slow) for every ```python block, in order."""
    out = []
    for m in _FENCE.finditer(text):
        tags = m.group(1).split()
        out.append((m.group(2), "slow" in tags))
    return out


def _run_pages(pages: dict[str, list[str]], tmp_path, timeout: int) -> None:
    (tmp_path / "pages.json").write_text(json.dumps(pages))
    (tmp_path / "runner.py").write_text(_RUNNER)
    (tmp_path / "pages").mkdir()
    env = dict(
        os.environ, MPLBACKEND="Agg", CARKINETICS_DOCS_TMP=str(tmp_path), CARKINETICS_DOCS_PAGES=str(tmp_path / "pages")
    )
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "pages.json"), str(tmp_path / "failed.json")],
        cwd=tmp_path / "pages",
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"the doc runner crashed:\n{proc.stderr[-4000:]}"
    failed = json.loads((tmp_path / "failed.json").read_text())
    assert not failed, "\n\n".join(f"{page} failed:\n{tb}" for page, tb in failed.items())
    assert proc.stdout.count(": ok") == len(pages)


def _collect(include_slow: bool) -> dict[str, list[str]]:
    pages = {}
    for page in _pages():
        with open(page, encoding="utf-8") as fh:
            blocks = extract_blocks(fh.read())
        rel = os.path.relpath(page, ROOT)
        if include_slow:
            if any(slow for _, slow in blocks):
                pages[rel] = [code for code, _ in blocks]
        else:
            fast = [code for code, slow in blocks if not slow]
            if fast:
                pages[rel] = fast
    return pages


def test_fence_parser():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python slow\ny = 2\n```\n"
    assert extract_blocks(text) == [("x = 1\n", False), ("y = 2\n", True)]


def test_readme_and_tutorials_are_executed():
    pages = _collect(include_slow=False)
    # the README quickstart and the tutorials are among the executed pages
    assert "README.md" in pages
    for name in (
        "index",
        "tutorial_fitting",
        "tutorial_gpu_sensitivity",
        "tutorial_timing",
        "tutorial_translation",
        "interop",
    ):
        assert os.path.join("docs", f"{name}.md") in pages or os.path.join("docs", f"{name}.md") in _collect(True)


def test_fast_blocks_run(tmp_path):
    _run_pages(_collect(include_slow=False), tmp_path, timeout=900)


@pytest.mark.slow
def test_all_blocks_run(tmp_path):
    pages = _collect(include_slow=True)
    if not pages:
        pytest.skip("no page has slow blocks")
    _run_pages(pages, tmp_path, timeout=3000)


def test_readme_keeps_the_two_commands():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    assert "```bash\npip install -e . && carkinetics demo\n```" in text
    assert '```bash\npip install -e ".[test]" && python -m pytest\n```' in text
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as fh:
        assert 'pip install -q -e ".[test]" && python -m pytest' in fh.read()
    # the console script named in the first command exists
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as fh:
        assert 'carkinetics = "carkinetics.cli:main"' in fh.read()
