"""The README's code examples run as printed."""

from __future__ import annotations

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_blocks(section: str) -> list:
    """The ```python blocks under the README heading ``## {section}`` (up to the next one)."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end >= 0 else len(text)]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_evaluate_your_own_detections_example_runs(tmp_path, monkeypatch, capsys):
    blocks = readme_python_blocks("Evaluate your own detections")
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(blocks[0], f"{README}:Evaluate your own detections", "exec"), namespace)
    results = namespace["results"]
    assert results.variants == [("all-images", False), ("all-images", True)]
    assert results["all-images", True]["k1"] == 10 and results["all-images", True]["k2"] == 3
    assert "mAP" in capsys.readouterr().out
    saved = json.loads((tmp_path / "my_eval" / "results.json").read_text())
    assert saved["search"][1]["mAP"] == results["all-images", True]["mAP"]
    assert saved["num_queries"] == 2 and saved["detection"]["all"]["recall"] == 1.0
