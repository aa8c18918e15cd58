"""Read the Dockerfile and ``.dockerignore`` the way ``docker build`` does, without Docker.

What the tests need from an image is what it *contains*: the files a stage copies from the
build context (after ``.dockerignore``), where they land (``WORKDIR``), and what it runs
(``CMD``). This module parses exactly that much of the Dockerfile syntax (continuation lines,
comments, ``FROM ... AS name`` stage inheritance, ``WORKDIR``, ``COPY`` in shell or JSON form)
and implements ``.dockerignore`` matching like moby's ``patternmatcher`` (``*``, ``?``, ``**``,
``!`` re-inclusion, last match wins, a pattern matching a parent directory matches its files),
so :func:`assemble` lays out in a folder the files the image's filesystem would hold.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.deploy import DOCKERFILE
from tests.support.processes import REPO_ROOT

__all__ = [
    "DOCKERFILE",
    "Copy",
    "IgnoreRule",
    "Stage",
    "assemble",
    "ignore_rules",
    "ignored",
    "instructions",
    "resolve",
]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (FROM included)."""
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for word, rest in instructions(text):
        if word == "FROM":
            match = re.search(r"\bAS\s+(\S+)", rest, re.IGNORECASE)
            current = found.setdefault(match[1] if match else f"stage{len(found)}", [])
        if current is not None:
            current.append((word, rest))
    return found


def _words(arguments: str) -> list[str]:
    """An instruction's arguments in JSON (exec) form or shell form."""
    if arguments.startswith("["):
        return [str(word) for word in json.loads(arguments)]
    return shlex.split(arguments)


@dataclass(frozen=True)
class Copy:
    """One ``COPY`` from the build context: ``sources`` (context paths) to ``dest`` (absolute)."""

    sources: tuple[str, ...]
    dest: str


@dataclass
class Stage:
    """What a stage's filesystem holds from the build context and what it runs."""

    name: str
    workdir: str = "/"
    copies: list[Copy] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)

    @property
    def python_module(self) -> str | None:
        """``X`` when the stage's command is ``python -m X``."""
        words = self.cmd
        if len(words) >= 3 and posixpath.basename(words[0]).startswith("python") and words[1] == "-m":
            return words[2]
        return None


def resolve(text: str) -> dict[str, Stage]:
    """Every stage, with the WORKDIR, context COPYs and CMD it has or inherits from its base stage."""
    resolved: dict[str, Stage] = {}
    for name, body in stages(text).items():
        base = _words(body[0][1])
        base = [word for word in base if not word.startswith("--")]
        parent = resolved.get(base[0]) if base else None
        stage = Stage(name)
        if parent is not None:
            stage.workdir, stage.copies, stage.cmd = parent.workdir, list(parent.copies), list(parent.cmd)
        for word, rest in body[1:]:
            if word == "WORKDIR":
                stage.workdir = posixpath.normpath(posixpath.join(stage.workdir, rest.strip()))
            elif word == "CMD":
                stage.cmd = _words(rest)
            elif word == "COPY":
                words = _words(rest)
                if any(w.startswith("--from") for w in words):
                    continue  # from another stage or image: not the build context
                paths = [w for w in words if not w.startswith("--")]
                dest = paths[-1]
                if not dest.startswith("/"):
                    dest = posixpath.join(stage.workdir, dest) + ("/" if dest.endswith("/") else "")
                stage.copies.append(Copy(tuple(paths[:-1]), dest))
        resolved[name] = stage
    return resolved


# --- .dockerignore ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IgnoreRule:
    """One ``.dockerignore`` line: ``reinclude`` for a ``!pattern``."""

    text: str
    regex: re.Pattern[str]
    reinclude: bool


def _regex(pattern: str) -> re.Pattern[str]:
    """moby patternmatcher's translation: ``**`` spans directories, ``*`` and ``?`` do not."""
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 1
                if pattern[i + 1 : i + 2] == "/":
                    i += 1
                out += ".*" if i + 1 >= len(pattern) else "(.*/)?"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out += re.escape(ch)
            else:
                out += pattern[i : end + 1]  # a character class, as Go's filepath.Match reads it
                i = end
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


def ignore_rules(text: str) -> list[IgnoreRule]:
    """The rules of a ``.dockerignore`` (comments and blank lines dropped, paths cleaned)."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        reinclude = line.startswith("!")
        pattern = line[1:].strip() if reinclude else line
        pattern = posixpath.normpath(pattern).lstrip("/") or "."
        rules.append(IgnoreRule(line, _regex(pattern), reinclude))
    return rules


def ignored(path: str, rules: list[IgnoreRule]) -> bool:
    """Whether ``path`` (relative, ``/``-separated) stays out of the build context.

    Like moby's ``MatchesOrParentMatches``: rules apply in order, the last that matches the
    path or one of its parent directories decides.
    """
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for rule in rules:
        if rule.reinclude != excluded:
            continue  # cannot change the outcome
        if any(rule.regex.match(candidate) for candidate in candidates):
            excluded = not rule.reinclude
    return excluded


def context_files(root: Path, source: str, rules: list[IgnoreRule]) -> Iterator[tuple[str, Path]]:
    """(path relative to ``source``, file) for every file of ``source`` that reaches the context."""
    start = root / source
    if start.is_file():
        if not ignored(source, rules):
            yield start.name, start
        return
    for file in sorted(p for p in start.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if not ignored(rel, rules):
            yield file.relative_to(start).as_posix(), file


def assemble(stage: Stage, rootfs: Path, context: Path = REPO_ROOT) -> Path:
    """Copy into ``rootfs`` what ``stage`` copies from ``context``; returns its WORKDIR there.

    A COPY source that is missing, or entirely ignored, raises ``FileNotFoundError`` as
    ``docker build`` would fail.
    """
    rules = ignore_rules((context / ".dockerignore").read_text()) if (context / ".dockerignore").exists() else []
    for copy in stage.copies:
        for source in copy.sources:
            files = list(context_files(context, source, rules))
            if not files:
                raise FileNotFoundError(f"COPY {source}: not in the build context (missing or .dockerignore'd)")
            is_dir = (context / source).is_dir()
            into_dir = is_dir or copy.dest.endswith("/") or len(copy.sources) > 1
            for rel, file in files:
                target = posixpath.join(copy.dest, rel) if into_dir else copy.dest
                out = rootfs / target.lstrip("/")
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, out)
    workdir = rootfs / stage.workdir.lstrip("/")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir
