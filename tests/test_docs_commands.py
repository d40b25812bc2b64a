"""Documented commands are tested commands.

Every ``synthface``/``make``/``prefect`` command line in README.md and docs/*.md (fenced shell
blocks and inline code) is found here and checked against the real parsers, so a renamed
flag, a dropped sub-command or a refused default breaks the suite at the doc line that
shows it. Doc grammar is understood: ``[optional]`` parts, ``(a | b)`` and ``a|b``
alternatives, ``...`` for "more of the same", ``\\`` continuations, comments, pipes and
redirections, placeholders such as FILE, DIR or ``<name>`` (a placeholder given to a
numeric option is read as 1). Fenced lines must parse in full; inline code may be a
mention (``synthface generator sample``): its sub-commands and flags must exist. The cheap
commands are also executed, on tiny inputs, further down.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("synthface", "make", "prefect")
SHELL_FENCES = {"", "sh", "bash", "shell", "console", "text"}
PLACEHOLDER = re.compile(r"^\d*[A-Z][A-Z0-9_]*$|^\$\{?\w+\}?$")  # N, 20N, $MACHINE_RANK


@dataclass(frozen=True)
class DocCommand:
    path: Path
    line: int
    text: str  # continuations joined, comment cut
    fenced: bool

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


# --- extraction -------------------------------------------------------------------------


def _cut_comment(line: str) -> str:
    """The line up to a shell comment (a ``#`` after blank space, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _program_start(text: str) -> str | None:
    """``text`` from its first command word on, if it runs one of PROGRAMS."""
    words = text.split()
    while words and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]) or words[0] == "$"):
        words = words[1:]  # VAR=value prefixes, a prompt
    if not words:
        return None
    head = words[0].removeprefix(".venv/bin/")
    if head not in PROGRAMS or len(words) < 2:
        return None
    if head == "make" and not re.match(r"^([A-Za-z_]+=|[a-z][a-z-]*$)", words[1]):
        return None  # prose such as "make OUT" in a sentence
    return " ".join([head, *words[1:]])


def _shell_commands(logical: str) -> list[str]:
    """The commands of one shell line: split at ``&&``, ``;`` and real pipes."""
    out = []
    for part in re.split(r"\s(?:&&|;|\|\|)\s", logical):
        part = part.strip().removesuffix("&").strip()
        cmd = _program_start(part)
        if cmd:
            out.append(cmd)
    return out


def _fenced(path: Path, lines: list[str]) -> list[DocCommand]:
    found, lang, i = [], None, 0
    while i < len(lines):
        m = re.match(r"^\s*(```+|~~~+)\s*([\w-]*)", lines[i])
        if m:
            lang = None if lang is not None else m.group(2).lower()
            i += 1
            continue
        if lang is None or lang not in SHELL_FENCES:
            i += 1
            continue
        start, logical = i, _cut_comment(lines[i])
        # `\` continuations, and a synopsis's indented next line of [options]
        while i + 1 < len(lines) and (
            logical.endswith("\\") or re.match(r"^\s+[\[(-]", lines[i + 1])
        ):
            i += 1
            logical = logical.removesuffix("\\").rstrip() + " " + _cut_comment(lines[i]).strip()
        found += [DocCommand(path, start + 1, c, True) for c in _shell_commands(logical)]
        i += 1
    return found


def _inline(path: Path, lines: list[str]) -> list[DocCommand]:
    """Inline code spans (which may wrap onto the next line of a paragraph) outside fences."""
    found, in_fence = [], False
    prose: list[tuple[int, str]] = []
    for n, line in enumerate(lines, 1):
        if re.match(r"^\s*(```+|~~~+)", line):
            in_fence = not in_fence
            prose.append((n, ""))
            continue
        prose.append((n, "" if in_fence else line))
    text = "\n".join(line for _, line in prose)
    starts = [0]
    for _, line in prose:
        starts.append(starts[-1] + len(line) + 1)
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        span = " ".join(m.group(1).replace("\\|", "|").split())
        cmd = _program_start(span)
        if cmd is None:
            continue
        line_no = next(k for k, s in enumerate(starts) if s > m.start())
        found.append(DocCommand(path, line_no, cmd, False))
    return found


@cache
def documented_commands() -> tuple[DocCommand, ...]:
    found: list[DocCommand] = []
    for path in DOC_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        found += _fenced(path, lines) + _inline(path, lines)
    return tuple(found)


# --- doc grammar ------------------------------------------------------------------------


def _tokens(text: str) -> list[str]:
    """Shell words, with the doc's grammar brackets split off (not those inside quotes)."""
    raw = re.findall(r"""(?:'[^']*'|"[^"]*"|[^\s'"])+""", text)
    out: list[str] = []
    for w in raw:
        lead: list[str] = []
        while w[:1] in ("[", "(") and len(w) > 1:
            lead.append(w[0])
            w = w[1:]
        trail: list[str] = []
        while w[-1:] in ("]", ")") and len(w) > 1 and w.count("[") < w.count("]") + (w[-1] == ")"):
            trail.insert(0, w[-1])
            w = w[:-1]
        try:
            words = shlex.split(w)
        except ValueError:
            words = [w]
        out += [*lead, *words, *trail]
    return out


def _cut_shell(words: list[str]) -> list[str]:
    """Drop ``> file`` redirections and a pipe into another program (``| head``)."""
    out: list[str] = []
    depth = 0
    i = 0
    while i < len(words):
        w = words[i]
        depth += w in ("[", "(")
        depth -= w in ("]", ")")
        if re.match(r"^\d?>>?(&\d)?$|^<$", w):
            i += 1 if "&" in w else 2
            continue
        if w == "|" and depth == 0 and i + 1 < len(words) and not words[i + 1].startswith("-"):
            break
        out.append(w)
        i += 1
    return out


def _parse_seq(words: list[str], i: int, stop: str | None) -> tuple[list, int]:
    """A tree: a list of items, each a word, ("opt", seq) or ("alt", [seq, ...])."""
    alts: list[list] = [[]]
    while i < len(words):
        w = words[i]
        if w == stop:
            return ([("alt", alts)] if len(alts) > 1 else alts[0]), i + 1
        if w in ("[", "("):
            sub, i = _parse_seq(words, i + 1, "]" if w == "[" else ")")
            alts[-1].append(("opt", sub) if w == "[" else ("group", sub))
            continue
        if w == "|":
            alts.append([])
        elif "|" in w and not w.startswith("-") and "=" not in w:
            alts[-1].append(("alt", [[v] for v in w.split("|") if v]))
        else:
            alts[-1].append("..." if w == "…" else w)
        i += 1
    if len(alts) > 1 and stop is None:
        # `A --flag x ... | --flag all`: the right side replaces A's tail from that flag on.
        left, right = alts[0], [x for alt in alts[1:] for x in alt]
        cut = left.index(right[0]) if right and right[0] in left else len(left)
        return [*left[:cut], ("alt", [left[cut:], right])], i
    return ([("alt", alts)] if len(alts) > 1 else alts[0]), i


def _nodes(seq) -> list:
    found = []
    for item in seq:
        if isinstance(item, tuple):
            found.append(item)
            subs = [item[1]] if item[0] in ("opt", "group") else item[1]
            for s in subs:
                found += _nodes(s)
    return found


def _render(seq, choice: dict[int, int], include_opt: bool) -> list[str]:
    out: list[str] = []
    for item in seq:
        if isinstance(item, str):
            out.append(item)
        elif item[0] == "opt":
            if include_opt:
                out += _render(item[1], choice, include_opt)
        elif item[0] == "group":
            out += _render(item[1], choice, include_opt)
        else:
            out += _render(item[1][choice.get(id(item), 0)], choice, include_opt)
    return out


def variants(text: str) -> list[list[str]]:
    """Argument lists covering every alternative and both states of the optional parts."""
    tree, _ = _parse_seq(_cut_shell(_tokens(text)), 0, None)
    found = [_render(tree, {}, True), _render(tree, {}, False)]
    for node in _nodes(tree):
        if node[0] == "alt":
            for k in range(1, len(node[1])):
                found.append(_render(tree, {id(node): k}, True))
    unique: list[list[str]] = []
    for v in found:
        if v not in unique:
            unique.append(v)
    return unique


# --- the synthface parser ---------------------------------------------------------------


@cache
def _parser():
    from synthface.pipeline.cli import build_parser

    return build_parser()


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _walk(argv: list[str]):
    """The chain of parsers that ``argv`` reaches, and where each option word is."""
    chain = [_parser()]
    i = 0
    while i < len(argv):
        w = argv[i]
        if w.startswith("-"):
            action = _option(chain, w.split("=", 1)[0])
            if action is not None and action.nargs != 0 and "=" not in w:
                i += 1
        else:
            sub = _subparsers(chain[-1])
            if sub is not None and w in sub.choices:
                chain.append(sub.choices[w])
            elif sub is not None:
                return chain, f"unknown command {w!r} (choose from {', '.join(sub.choices)})"
        i += 1
    return chain, None


def _option(chain, flag: str):
    for p in reversed(chain):
        if flag in p._option_string_actions:
            return p._option_string_actions[flag]
    return None


def _prepare(argv: list[str]) -> list[str]:
    """Drop the CLI's global switches (as cli.main does) and "..." that only means "more"."""
    argv = [a for a in argv if a not in ("--debug", "--quiet")]
    if argv[:1] == ["..."]:
        return argv  # `synthface ... --flag`: any command; see _mention_problem
    chain, _ = _walk([a for a in argv if a != "..."])
    out: list[str] = []
    for w in argv:
        if w == "...":
            prev = _option(chain, out[-1]) if out and out[-1].startswith("-") else None
            if prev is None or prev.nargs == 0:
                continue  # "more of the same"; after an option taking a value, a placeholder
        out.append(w)
    return out


def _is_placeholder(word: str) -> bool:
    return bool(PLACEHOLDER.match(word)) or word == "..." or "<" in word


def _parse_synthface(argv: list[str]) -> str | None:
    """None if the real parser takes ``argv``, else its one-line complaint.

    A placeholder that an option refuses (N to an int option, ... to a choice) is replaced
    by a value the option takes (1, its first choice) and the line parsed again.
    """
    argv = list(argv)
    for _ in range(len(argv) + 1):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                _parser().parse_args(argv)
                return None
            except SystemExit as exc:
                if exc.code in (0, None):
                    return None
        complaint = err.getvalue().strip().splitlines()[-1]
        m = re.search(r"argument (\S+): invalid (choice|.*? value): '([^']*)'", complaint)
        if not (m and _is_placeholder(m.group(3))):
            return complaint
        flags = m.group(1).split("/")
        chain, _ = _walk(argv)
        action = _option(chain, flags[-1])
        if action is None:
            return complaint
        good = str(next(iter(action.choices))) if m.group(2) == "choice" else "1"
        spots = [i for i in range(1, len(argv)) if argv[i - 1] in flags and argv[i] == m.group(3)]
        if not spots:
            return complaint
        argv[spots[0]] = good
    return complaint


def _all_options(parser) -> set[str]:
    found = set(parser._option_string_actions)
    sub = _subparsers(parser)
    for child in sub.choices.values() if sub is not None else ():
        found |= _all_options(child)
    return found


def _mention_problem(argv: list[str]) -> str | None:
    """For a mention: its sub-commands and every flag it names must exist."""
    if argv[:1] == ["..."]:  # `synthface ... --device cuda`: some command takes the flag
        unknown = [w for w in argv if w.startswith("--") and w not in _all_options(_parser())]
        return f"no command takes {', '.join(unknown)}" if unknown else None
    chain, problem = _walk(argv)
    if problem:
        return problem
    for w in argv:
        if w.startswith("--") and _option(chain, w.split("=", 1)[0]) is None:
            return f"unknown option {w} for `synthface {' '.join(p.prog.split()[-1] for p in chain[1:])}`"
    return None


INCOMPLETE = ("arguments are required", "expected one argument", "is required")


def check_synthface(cmd: DocCommand) -> list[str]:
    problems = []
    for v in variants(cmd.text):
        argv = _prepare(v[1:])
        complaint = _mention_problem(argv) if argv[:1] == ["..."] else _parse_synthface(argv)
        if complaint is None:
            continue
        # inline code may mention a command; a fenced line ending in "..." shows its start
        partial = not cmd.fenced or cmd.text.endswith("...")
        if partial and any(s in complaint for s in INCOMPLETE):
            complaint = _mention_problem(argv)
            if complaint is None:
                continue
        problems.append(f"{cmd.where}: `{' '.join(v)}` does not parse: {complaint}")
    return problems


def test_the_docs_show_commands_of_every_kind():
    cmds = documented_commands()
    by_program = {p: [c for c in cmds if c.text.split()[0] == p] for p in PROGRAMS}
    assert len(by_program["synthface"]) > 80, "the extractor lost the docs' synthface commands"
    assert by_program["make"] and by_program["prefect"]
    # continuations are joined and comments cut
    joined = [c for c in cmds if "--param output_dir=" in c.text and c.fenced]
    assert joined and all("#" not in c.text for c in cmds if c.fenced)


def test_doc_grammar_expands_optional_parts_and_alternatives():
    got = variants("synthface eval ijb --features F.npy (--flip-features G.npy | --no-flip)")
    assert ["synthface", "eval", "ijb", "--features", "F.npy", "--no-flip"] in got
    got = variants(
        "synthface world pairs OUT --protocol lfw --protocol cfp-fp ... | --protocol all"
    )
    assert ["synthface", "world", "pairs", "OUT", "--protocol", "all"] in got
    got = variants("synthface world make OUT [--split train|eval] > log.txt")
    assert ["synthface", "world", "make", "OUT"] in got
    assert ["synthface", "world", "make", "OUT", "--split", "eval"] in got


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_every_documented_synthface_command_parses(doc):
    cmds = [c for c in documented_commands() if c.path == doc and c.text.startswith("synthface ")]
    problems = [p for c in cmds for p in check_synthface(c)]
    assert not problems, "\n".join(problems)


def test_synthface_home_in_a_command_is_left_to_synthface():
    """Unquoted, the shell expands ${SYNTHFACE_HOME} to "" when it is unset: /out/...; in
    single quotes synthface expands it (to the current directory when unset)."""
    bad = []
    for cmd in documented_commands():
        unquoted = re.sub(r"'[^']*'", "", cmd.text)
        if cmd.fenced and re.search(r"\$\{?SYNTHFACE_HOME", unquoted):
            bad.append(str(cmd))
    assert not bad, "quote these with '...':\n" + "\n".join(bad)


def test_a_renamed_flag_would_be_caught():
    cmd = DocCommand(ROOT / "README.md", 1, "synthface world make OUT --identitiez 3", True)
    assert check_synthface(cmd) and "README.md:1" in check_synthface(cmd)[0]
    mention = DocCommand(ROOT / "README.md", 1, "synthface generator sampel", False)
    assert check_synthface(mention)


# --- module forms, make and prefect -------------------------------------------------------


def test_documented_module_forms_name_runnable_modules():
    """`python -m synthface.X`, `accelerate launch ... -m synthface.X`: X must run as a module."""
    import importlib.util

    problems = []
    for path in DOC_FILES:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for module in re.findall(r"-m (synthface(?:\.\w+)+)", line):
                spec = importlib.util.find_spec(module)
                runnable = spec is not None and (
                    spec.submodule_search_locations is None
                    or importlib.util.find_spec(module + ".__main__") is not None
                )
                if not runnable:
                    problems.append(f"{path.relative_to(ROOT)}:{n}: no runnable module {module}")
    assert not problems, "\n".join(problems)


def test_documented_make_lines_name_real_targets():
    if shutil.which("make") is None:
        pytest.skip("no make here")
    problems = []
    for cmd in documented_commands():
        words = shlex.split(cmd.text)
        if words[0] != "make":
            continue
        # dry run: make parses the Makefile and plans the recipe without running it
        run = subprocess.run(
            ["make", "-n", "-C", str(ROOT), *words[1:]], capture_output=True, text=True
        )
        if run.returncode != 0:
            problems.append(f"{cmd}: {run.stderr.strip()}")
    assert not problems, "\n".join(problems)


def _prefect_commands() -> list[DocCommand]:
    return [c for c in documented_commands() if c.text.startswith("prefect ")]


def test_documented_prefect_lines_parse_and_name_real_deployments():
    """Prefect's own parser takes each line (nothing runs); a deployment run names a
    deployment of the table and parameters its flow has (``--param key=value``)."""
    import inspect

    try:
        from prefect.cli._app import _app  # cyclopts app; parse_args binds without running
    except ImportError as exc:  # a private module: say so rather than pass silently
        pytest.skip(f"prefect's CLI app is not importable here ({exc})")
    from synthface.flows.deployments import build_table

    table = {row.full_name: row for row in build_table(base=ROOT)}
    problems = []
    for cmd in _prefect_commands():
        for v in variants(cmd.text):
            argv = [w for w in v[1:] if w != "..."]
            if argv in ([], ["deployment", "run"], ["deploy"]):
                continue  # a mention in prose
            argv = ["default" if w == "FLOW/NAME" else w for w in argv]
            try:
                fn, bound, _ = _app.parse_args(argv, exit_on_error=False, print_error=False)
            except Exception as exc:
                problems.append(f"{cmd.where}: `{' '.join(v)}`: {type(exc).__name__}: {exc}")
                continue
            if fn.__name__ != "run" or argv[0] != "deployment":
                continue
            name = bound.arguments["name"]
            if name not in table:
                problems.append(f"{cmd.where}: no deployment {name} (have: {', '.join(table)})")
                continue
            flow_params = inspect.signature(table[name].entry.load().fn).parameters
            for param in bound.arguments.get("params", []):
                key = param.split("=", 1)[0]
                if key not in flow_params:
                    problems.append(f"{cmd.where}: {name} has no parameter {key!r}")
    assert not problems, "\n".join(problems)


# --- executed on tiny inputs ------------------------------------------------------------
# The documented line is found by a fragment (so a changed doc line fails here, naming it),
# its first variant (optional parts included) is taken, sizes and placeholders are swapped
# for tiny values, and it runs through the real CLI entry point. Outputs land in a fresh
# folder, the working directory and $SYNTHFACE_HOME of the run, as for a new user.


def doc_command(fragment: str) -> DocCommand:
    """The documented command that is ``fragment``, else the first that contains it."""
    found = [c for c in documented_commands() if fragment in c.text]
    assert found, f"no documented command contains {fragment!r} any more"
    return next((c for c in found if c.text == fragment), found[0])


def _in_checkout(word: str) -> str:
    """The docs run from the checkout: its configs/ and data/ are named relative to it."""
    return re.sub(
        r"(^|=)((?:configs|data/demo)/)", lambda m: m.group(1) + f"{ROOT}/" + m.group(2), word
    )


def run_doc(
    fragment: str,
    subs: dict[str, str] | None = None,
    *,
    variant: int = 0,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """Run the documented line; ``extra`` options (documented ones) only size the work down."""
    from synthface.pipeline.cli import main

    cmd = doc_command(fragment)
    argv = _prepare(variants(cmd.text)[variant][1:])
    subs = subs or {}
    argv = [_in_checkout(subs.get(w, w)) for w in argv] + list(extra)
    code = main(argv)
    assert code == 0, f"{cmd.where}: `synthface {' '.join(argv)}` exited {code}"
    return argv


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYNTHFACE_HOME", str(tmp_path))
    monkeypatch.setenv("SYNTHFACE_QUIET", "1")
    return tmp_path


def test_read_only_commands_run(home, capsys):
    run_doc("synthface frcsyn rules", variant=0)
    run_doc("synthface frcsyn rules", variant=1)
    run_doc("synthface privacy methods")
    run_doc("synthface config validate FILE", {"FILE": "configs/recognition/world_tiny.yaml"})
    out = capsys.readouterr().out
    assert "1.1" in out and "world_tiny.yaml" in out
    run_doc("synthface config show synthface:generate/default.yaml")
    assert "kind: generate" in capsys.readouterr().out


def test_world_and_shards_commands_run(home, capsys):
    run_doc("world make out/privacy/world/train", {"300": "4", "10": "2"})
    run_doc("world make out/privacy/world/attacker", {"200": "3", "10": "2"})
    run_doc("world pairs out/privacy/world/pairs", {"100": "2"})
    assert (home / "out/privacy/world/pairs/lfw.bin").stat().st_size > 0
    ds = "out/privacy/world/train"
    run_doc("synthface shards verify DIR", {"DIR": ds, "S": "train"})
    capsys.readouterr()
    run_doc("synthface shards inspect DIR", {"DIR": ds})
    assert json_out(capsys)["splits"]["train"]["images"] == 8
    run_doc("synthface shards to-folder DIR OUT", {"DIR": ds, "OUT": "folder"})
    assert len([p for p in (home / "folder").rglob("*") if p.is_file()]) == 8
    run_doc("synthface shards to-rec DIR OUT", {"DIR": ds, "OUT": "rec"})
    run_doc("synthface shards from-rec PREFIX OUT", {"PREFIX": "rec", "OUT": "from_rec"})
    run_doc("synthface shards verify DIR", {"DIR": "from_rec", "S": "train"})


def json_out(capsys) -> dict:
    import json

    return json.loads(capsys.readouterr().out)


def test_eval_and_anchor_commands_run(home, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    np.save(home / "E.npy", rng.normal(size=(40, 8)).astype(np.float32))
    pairs = [f"{i} {i + 1} {i // 2 % 2}" for i in range(0, 38, 2)]
    (home / "P.txt").write_text("\n".join(pairs) + "\n")
    for v in range(2):
        run_doc("synthface eval verify --embeddings E.npy --pairs P.txt", variant=v)
    capsys.readouterr()
    run_doc(
        "synthface generator anchors --n N --dim D --out F.npy", {"N": "6", "D": "4"}, variant=1
    )
    assert np.load(home / "F.npy").shape == (6, 4)


@pytest.mark.slow
def test_world_recognizer_generator_sequence_runs(home, capsys):
    """docs/training.md and docs/generators.md: faces, pairs, a recognizer, a 512-d encoder,
    an ID³ generator on it, then export and embed, each as printed (smaller)."""
    import numpy as np

    small = ("--set", "data.batch_size=4", "--set", "train.max_steps=2")
    run_doc("world make out/world/train --identities 500", {"500": "4", "20": "3"})
    run_doc("world pairs out/world/pairs --protocol lfw --size 48", extra=("--pairs-per-fold", "2"))
    run_doc("synthface recognition train configs/recognition/world_tiny.yaml", extra=small)
    assert (home / "out/recognition/world_tiny/model/config.json").is_file()
    run_doc("recognition train configs/recognition/world_tiny.yaml --set model.embedding_dim=512",
            extra=small)  # fmt: skip
    run_doc("synthface generator train configs/generators/id3_world.yaml",
            extra=("--set", "train.steps=1", "--set", "train.batch_size=4"))  # fmt: skip
    assert (home / "out/generators/id3_world/final").is_dir()
    model = {
        "OUTPUT/model": "out/recognition/world_tiny/model",
        "CKPT": "out/recognition/world_tiny/model",
    }
    # 48 px is below insightface's ArcFaceONNX minimum: the documented --any-size variant
    run_doc("synthface recognition export CKPT --onnx OUT.onnx", {**model, "OUT.onnx": "r.onnx"})
    assert (home / "r.onnx").stat().st_size > 0
    run_doc(
        "synthface recognition embed (--images DIR",
        {"DIR": "out/world/train", "M": "r.onnx"},
        variant=2,
    )
    capsys.readouterr()
    assert np.load(home / "E.npy").shape == (12, 128)


@pytest.mark.slow
def test_quality_sequence_runs(home):
    """docs/quality.md from a fresh checkout, on a smaller world."""
    import numpy as np

    run_doc("world make out/quality/world --identities 300", {"300": "4", "10": "3"})
    run_doc("quality pseudo-labels out/quality/world --recognizer data/demo")
    run_doc("quality train configs/quality/world_tiny.yaml --set model.init=data/demo",
            extra=("--set", "data.batch_size=4", "--set", "train.epochs=1"))  # fmt: skip
    run_doc("quality score out/quality/world --model out/quality/world_tiny/model")
    assert np.load(home / "out/quality/q.npy").shape == (12,)
