"""The README's code runs as written; the trained-run example on a tiny trained run in place of /tmp/diffax_digits."""

import pathlib
import re

README_WORKDIR = "/tmp/diffax_digits"


def test_readme_python_examples_run(tiny_run):
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert any("load_run(" in block for block in blocks), "README has no load_run example"
    for block in blocks:
        exec(compile(block.replace(README_WORKDIR, tiny_run), "README.md", "exec"), {})
