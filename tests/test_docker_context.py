"""What `docker build .` sends: `.dockerignore`, read by the Docker SDK's own matcher
(`docker.utils.build.exclude_paths`, the rules `docker build` applies), keeps the virtual
environment, git history and measured results out, and keeps what the Dockerfile installs."""

from __future__ import annotations

import subprocess
from pathlib import Path

from docker.utils.build import exclude_paths

ROOT = Path(__file__).parent.parent


def build_context(tmp_path: Path) -> set[str]:
    """The context `docker build` would send for a copy of this checkout (the tracked files,
    empty) plus what a working checkout also has: a venv, git objects, caches, key hashes."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    local = [
        ".venv/lib/python3.11/site-packages/torch/__init__.py",
        ".git/HEAD",
        ".git/objects/ab/cdef",
        "serve_app/__pycache__/config.cpython-311.pyc",
        "rerank_serve.egg-info/PKG-INFO",
        "results/run.json",
        ".rerank-api-keys",
    ]
    for name in [*tracked, *local]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    patterns = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p for p in patterns if p.strip() and not p.startswith("#")]
    return set(exclude_paths(str(tmp_path), patterns, dockerfile="Dockerfile"))


def test_dockerignore_keeps_venv_git_and_results_out_of_the_image(tmp_path):
    context = build_context(tmp_path)
    leaked = [
        p
        for p in context
        if p.split("/")[0] in {".venv", ".git", "results", ".rerank-api-keys"}
        or "__pycache__" in p
        or p.startswith("docs/bench/")
        or ".egg-info" in p
    ]
    assert not leaked, leaked


def test_dockerignore_keeps_what_the_image_installs(tmp_path):
    context = build_context(tmp_path)
    assert {"Dockerfile", "pyproject.toml", "README.md", "serve_app/config.py"} <= context
    sources = [p for p in context if p.startswith("serve_app/")]
    tracked = subprocess.run(
        ["git", "ls-files", "serve_app"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(tracked) <= set(sources)
