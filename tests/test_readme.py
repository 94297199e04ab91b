"""Every `$ dig ...` example in README.md, run against the real server on the example cluster."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from harness import EXAMPLE, ROOT, KdnsProcess


def readme_examples() -> list[tuple[str, list[str]]]:
    text = open(os.path.join(ROOT, "README.md")).read()
    examples, current = [], None
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.splitlines():
            if line.startswith("$ dig "):
                current = (line[2:], [])
                examples.append(current)
            elif current is not None and line.strip():
                current[1].append(line)
        current = None
    return examples


EXAMPLES = readme_examples()


def test_readme_has_examples():
    assert len(EXAMPLES) >= 10


def test_readme_example_command_matches_dev_script():
    dev = open(os.path.join(ROOT, "dev")).read()
    assert "--manifests examples/cluster.yaml --listen 127.0.0.1:5353" in dev


@pytest.fixture(scope="module")
def kdns():
    with KdnsProcess("--manifests", EXAMPLE, "--pods", "insecure") as proc:
        yield proc


def _normalise(line: str) -> str:
    line = re.sub(r"id: \d+", "id: 0", line)
    return re.sub(r"(SOA\s+\S+\s+\S+\s+)\d+", r"\g<1>0", line)


@pytest.mark.parametrize("command,expected", EXAMPLES, ids=[c for c, _ in EXAMPLES])
def test_readme_dig_example(kdns, command, expected):
    command = command.replace("-p 5353", f"-p {kdns.port}")
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=20).stdout
    got = [_normalise(l) for l in out.splitlines() if l.strip()]
    assert got == [_normalise(l) for l in expected], f"{command}\n{out}"
