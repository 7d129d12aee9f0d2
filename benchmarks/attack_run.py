"""A fresh hostile run over every `abc` command (issue 18): exit 3, hangs, lost data.

Not part of the test suite (it takes minutes): it runs `abc` as a subprocess, case by case,
with a timeout, on seeded generated inputs of each class the issue names, and prints a table
per class: cases, exit-3 (exit code 3, or "Traceback" / "internal error" on stderr), hangs
(past the timeout) and lost data (an existing file changed without --force, rows missing or
duplicated after a resume, an import that does not account for every row).

    python benchmarks/attack_run.py                    # every class, 8 cases each
    python benchmarks/attack_run.py --cases 20 --only import,abs --markdown out.md -v

Each case runs in a fresh folder under --work (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.set_int_max_str_digits(0)  # so the generator itself can write huge integers
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")
MACRO_ABS = ROOT / "spaces" / "nas_bench_macro.abs"
OFA_ABS = ROOT / "spaces" / "ofa_mbv3.abs"
MACRO_JSON = DATA / "nas_bench_macro" / "nas-bench-macro_cifar10.json"
OFA_CSV = DATA / "dynast_ofa_mbv3_acc" / "mbnv3w10_evoga_acc.csv"
ABC = [sys.executable, "-m", "autobuild_dsl"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "120"}

HOSTILE_NUMBERS = [
    "0",
    "-1",
    "1e309",
    "-1e309",
    "1" + "0" * 400,
    "2147483648",
    "9" * 30,
    "1.5",
    "0.0000001",
    "1e-400",
    "nan",
    "inf",
    "0x10",
    "1_000",
    "007",
]
HOSTILE_TEXT = [
    "",
    " ",
    "\x00",
    "\ufeff",
    "é",
    "💥",
    "[bold]x[/]",
    ":smile:",
    "\n",
    "\r\n",
    "'",
    '"',
    "{",
    "}",
    "(((((",
    "\\",
    "%s",
    "{arch}",
    "$(touch PWNED)",
    "`touch PWNED`",
    "__import__('os')",
]


@dataclass
class Outcome:
    cls: str
    name: str
    argv: list[str]
    rc: int | None
    exit3: bool = False
    hang: bool = False
    lost: str = ""
    seconds: float = 0.0
    stderr: str = ""


@dataclass
class Ctx:
    work: Path
    rng: random.Random
    timeout: float
    verbose: bool
    fixtures: dict[str, Path] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    counter: int = 0

    def case_dir(self, cls: str) -> Path:
        self.counter += 1
        path = self.work / f"{cls}-{self.counter:04d}"
        path.mkdir(parents=True)
        return path


# ------------------------------------------------------------------ running and judging


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


def _snapshot(folder: Path) -> dict[Path, str]:
    out = {}
    for path in folder.rglob("*"):
        # A lock file left by a killed writer is not data: resume may clear it.
        if path.is_file() and not path.is_symlink() and not path.name.endswith(".lock"):
            out[path] = _digest(path)
    return out


def _spawn(argv: list[str], cwd: Path, stdin: str | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*ABC, *argv],
        cwd=cwd,
        env=ENV,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,  # so a hang or kill takes the workers with it
    )


def _finish(proc: subprocess.Popen, timeout: float, stdin: str | None = None):
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
        return proc.returncode, out, err, False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err, True


def _is_exit3(rc: int | None, err: str) -> bool:
    return rc == 3 or "Traceback" in err or "internal error" in err.lower()


def record(
    ctx: Ctx,
    cls: str,
    name: str,
    argv: list[str],
    rc: int | None,
    err: str,
    hang: bool,
    seconds: float,
    lost: str = "",
) -> Outcome:
    outcome = Outcome(cls, name, argv, rc, _is_exit3(rc, err), hang, lost, seconds, err[-2000:])
    ctx.outcomes.append(outcome)
    if ctx.verbose or outcome.exit3 or outcome.hang or outcome.lost:
        flag = "EXIT3" if outcome.exit3 else "HANG" if hang else "LOST" if lost else "ok"
        print(f"[{cls}] {flag:5} rc={rc} {seconds:5.1f}s {name}: {' '.join(argv)[:160]}")
        if flag != "ok":
            print("    " + (lost or err.strip()[-600:]).replace("\n", "\n    "))
    return outcome


def attack(
    ctx: Ctx,
    cls: str,
    name: str,
    argv: list[str],
    cwd: Path,
    *,
    may_change: tuple[Path, ...] = (),
    stdin: str | None = None,
    timeout: float | None = None,
    check: Callable[[int | None, str, str], str] | None = None,
) -> tuple[int | None, str, str]:
    """Run one case; every file under `cwd` not in `may_change` must keep its bytes."""
    before = _snapshot(cwd)
    start = time.monotonic()
    rc, out, err, hang = _finish(_spawn(argv, cwd, stdin), timeout or ctx.timeout, stdin)
    seconds = time.monotonic() - start
    lost = ""
    allowed = {p.resolve() for p in may_change}
    for path, digest in before.items():
        if path.resolve() in allowed:
            continue
        if not path.exists():
            lost = f"{path.name} was removed"
        elif _digest(path) != digest:
            lost = f"{path.name} changed"
    if list(cwd.rglob("PWNED")):
        lost = "a hostile string ran as code (PWNED exists)"
    if not lost and check is not None and not hang:
        lost = check(rc, out, err)
    record(ctx, cls, name, argv, rc, err, hang, seconds, lost)
    return rc, out, err


# ------------------------------------------------------------------ fixtures


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def setup(ctx: Ctx) -> None:
    fx = ctx.work / "fixtures"
    fx.mkdir()
    table = json.loads(MACRO_JSON.read_text())
    keys = sorted(table)[:: len(table) // 160][:160]
    (fx / "macro.json").write_text(json.dumps({k: table[k] for k in keys}))
    with OFA_CSV.open(newline="") as f:
        lines = f.read().splitlines(keepends=True)
    (fx / "ofa.csv").write_text("".join(lines[:25]))

    def run(*argv: str) -> None:
        proc = subprocess.run([*ABC, *argv], cwd=fx, env=ENV, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"fixture failed: abc {' '.join(argv)}\n{proc.stderr}")

    run("data", "import", "--from", "nas-bench-macro", "macro.json", "--space", str(MACRO_ABS),
        "-o", "data.jsonl")  # fmt: skip
    # The whole table, so a lookup evaluator knows every architecture a search may visit.
    run("data", "import", "--from", "nas-bench-macro", str(MACRO_JSON), "--space", str(MACRO_ABS),
        "-o", "full.jsonl")  # fmt: skip
    run("sample", str(MACRO_ABS), "-n", "40", "--seed", "1", "-o", "archs.jsonl")
    for name, target in (("run1", "mean_acc"), ("run2", "-params")):
        run("train", str(MACRO_ABS), "data.jsonl", "--target", target, "-o", name,
            "--epochs", "2", "--folds", "2", "--quiet")  # fmt: skip
    ctx.fixtures = {p.name: p for p in fx.iterdir()}


def copy_fixture(ctx: Ctx, name: str, into: Path) -> Path:
    src = ctx.fixtures[name]
    dst = into / name
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy(src, dst)
    return dst


# ------------------------------------------------------------------ mutations


def mutate_text(rng: random.Random, text: str) -> str:
    kind = rng.randrange(9)
    if kind == 0 and text:  # delete a span
        i = rng.randrange(len(text))
        return text[:i] + text[i + rng.randint(1, 40) :]
    if kind == 1:  # a number becomes a hostile one
        numbers = list(re.finditer(r"\b\d+\b", text))
        if numbers:
            m = rng.choice(numbers)
            return text[: m.start()] + rng.choice(HOSTILE_NUMBERS) + text[m.end() :]
    if kind == 2:  # a hostile string somewhere
        i = rng.randrange(len(text) + 1)
        return text[:i] + rng.choice(HOSTILE_TEXT) + text[i:]
    if kind == 3:  # truncate
        return text[: rng.randrange(len(text) + 1)]
    if kind == 4:  # duplicate a line
        lines = text.splitlines(keepends=True)
        if lines:
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
            return "".join(lines)
    if kind == 5:  # swap two lines
        lines = text.splitlines(keepends=True)
        if len(lines) > 1:
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            return "".join(lines)
    if kind == 6:  # a random byte-ish character
        i = rng.randrange(len(text) + 1)
        return (
            text[:i]
            + chr(rng.choice([0, 7, 0x7F, 0x85, 0x2028, 0xFFFF, rng.randrange(1, 0x3000)]))
            + text[i:]
        )
    if kind == 7:  # nesting
        i = rng.randrange(len(text) + 1)
        depth = rng.choice([50, 500, 5000])
        return text[:i] + rng.choice(["(", "[", "{"]) * depth + text[i:]
    return text + rng.choice(HOSTILE_TEXT)


def encode_hostile(rng: random.Random, text: str) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return b"\xef\xbb\xbf" + text.encode()
    if kind == 1:
        return text.encode("utf-16")
    if kind == 2:
        return text.encode("latin-1", errors="replace") + b"\xe9\xff"
    if kind == 3:
        return text.replace("\n", "\r\n").encode()
    return text.encode()[: max(0, len(text.encode()) - rng.randint(1, 30))]


# ------------------------------------------------------------------ classes


def cls_abs(ctx: Ctx, n: int) -> None:
    """Mutated .abs files through compile, fmt, sample, validate."""
    bases = [MACRO_ABS.read_text(), OFA_ABS.read_text()]
    for _ in range(n):
        d = ctx.case_dir("abs")
        text = ctx.rng.choice(bases)
        for _ in range(ctx.rng.randint(1, 3)):
            text = mutate_text(ctx.rng, text)
        f = d / "s.abs"
        f.write_bytes(encode_hostile(ctx.rng, text) if ctx.rng.random() < 0.3 else text.encode())
        cmd = ctx.rng.choice(
            [
                ["compile", "s.abs"],
                ["compile", "s.abs", "--json"],
                ["fmt", "--check", "s.abs"],
                ["sample", "s.abs", "-n", "3", "--distinct"],
                ["compile", "s.abs", "--spec", "spec.json"],
            ]
        )
        attack(ctx, "abs", "mutated", cmd, d, may_change=(d / "spec.json",))


def _space_with(body_stage: str, extra: str = "") -> str:
    return f"""space big {{
  input(channels = 3, size = 32)
  {extra}
  stem {{ conv(out = 8, kernel = 3) }}
  stages (width) {{ s1 = (16) }} {{
    {body_stage}
  }}
  head {{ pool() linear(out = 10) }}
}}
"""


def cls_huge(ctx: Ctx, n: int) -> None:
    """Huge numbers, ranges, sets, nesting, long expressions, extends chains."""
    rng = ctx.rng
    makers: list[Callable[[], dict[str, str]]] = [
        lambda: {"s.abs": _space_with(f"depth 1..{rng.choice(['3000', '65536', '10**9', '9' * 50])}\n layer conv(out = width)")},
        lambda: {"s.abs": _space_with(f"depth {rng.choice(['0', '-3', '1e3', '2.5', '99999999999'])}\n layer conv(out = width)")},
        lambda: {"s.abs": _space_with("depth 2\n layer conv(out = width, kernel = k)",
                                      f"choice k = {rng.choice(['1..50000000', '1..10**12', '1..3 step 0', '5..1', '1..9 step -1'])}")},
        lambda: {"s.abs": _space_with("depth 1\n layer conv(out = width, kernel = k)",
                                      "choice k = {" + ", ".join(str(i) for i in range(rng.choice([5000, 60000]))) + "}")},
        lambda: {"s.abs": _space_with("depth 1\n layer conv(out = width)",
                                      "let a = " + "(" * rng.choice([300, 2000]) + "1" + ")" * rng.choice([300, 2000]))},
        lambda: {"s.abs": _space_with("depth 1\n layer conv(out = width)",
                                      "let a = " + "-" * rng.choice([3000, 20000]) + "1")},
        lambda: {"s.abs": _space_with("depth 1..3\n layer conv(out = width)",
                                      "require " + " + ".join(["s1.depth"] * rng.choice([1500, 5000])) + " > 0")},
        lambda: {"s.abs": _space_with("depth 1\n layer conv(out = width * " + rng.choice(HOSTILE_NUMBERS) + ")")},
        lambda: {"s.abs": _space_with("depth 1\n layer " + " | ".join(f"conv(out = width, kernel = {k})" for k in range(rng.choice([2000, 9000]))))},
        lambda: {"s.abs": "".join(
            f"space s{i} {'extends s' + str(i + 1) + ' ' if i < 999 else ''}{{\n}}\n" for i in range(1000))},
        lambda: _extends_files(rng.choice([300, 1200])),
        lambda: {"s.abs": _space_with("depth 1\n layer conv(out = width, kernel = " + " * ".join(["3"] * rng.choice([200, 400])) + ")")},
    ]  # fmt: skip
    for i in range(n):
        d = ctx.case_dir("huge")
        files = makers[i % len(makers)]()
        for name, text in files.items():
            (d / name).write_text(text)
        cmd = rng.choice([["compile", "s.abs"], ["sample", "s.abs", "-n", "2"], ["fmt", "s.abs"]])
        attack(ctx, "huge", f"maker{i % len(makers)}", cmd, d)


def _extends_files(count: int) -> dict[str, str]:
    files = {}
    for i in range(count):
        parent = f'import "f{i + 1}.abs"\n' if i + 1 < count else ""
        ext = f" extends s{i + 1}" if i + 1 < count else ""
        body = "" if i + 1 < count else MACRO_ABS.read_text().split("space nas_bench_macro", 1)[1]
        if i + 1 == count:
            files[f"f{i}.abs"] = f"space s{i}" + body
        else:
            files[f"f{i}.abs"] = f"{parent}space s{i}{ext} {{\n}}\n"
    files["s.abs"] = files.pop("f0.abs")
    return files


def _corrupt_csv(rng: random.Random, text: str) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    kind = rng.randrange(10)
    if kind == 0:
        rows[0].append(rows[0][rng.randrange(len(rows[0]))])  # duplicate header
    elif kind == 1:
        rows[rng.randrange(1, len(rows))].append("extra")
    elif kind == 2:
        r = rows[rng.randrange(1, len(rows))]
        r.pop()
    elif kind == 3:
        r = rows[rng.randrange(1, len(rows))]
        r[rng.randrange(len(r))] = rng.choice(HOSTILE_NUMBERS + HOSTILE_TEXT)
    elif kind == 4:
        rows = rows[:1]
    elif kind == 5:
        rows.extend(rows[1:4])  # duplicates
    elif kind == 6:
        r = rows[rng.randrange(1, len(rows))]
        r[-1] = rng.choice(["1e308", "1.7e308", "-1e308", "9" * 400])
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    text = out.getvalue()
    if kind == 7:
        text = text[: rng.randrange(len(text))]
    if kind == 8:
        text = mutate_text(rng, text)
    return text


def _corrupt_json(rng: random.Random, table: dict) -> str:
    keys = list(table)
    kind = rng.randrange(10)
    table = json.loads(json.dumps(table))
    if kind == 0:
        k = rng.choice(keys)
        table[k[:-1] + rng.choice("3x ")] = table[k]  # a key off the space
    elif kind == 1:
        table[rng.choice(keys)]["mean_acc"] = rng.choice([None, "x", [], {}, 1e308, -1, True])
    elif kind == 2:
        table[rng.choice(keys)]["test_acc"] = rng.choice([[], [1e308, 1e308], "abc", [None]])
    elif kind == 3:
        del table[rng.choice(keys)]["mean_acc"]
    elif kind == 4:
        text = json.dumps(table)
        k = rng.choice(keys)
        return text[:-1] + f', "{k}": {json.dumps(table[k])}' + "}"  # duplicate key
    elif kind == 5:
        return "[" * rng.choice([1000, 100000]) + "]" * 3
    elif kind == 6:
        table[rng.choice(keys)]["params"] = int("9" * rng.choice([400, 5000]))
    elif kind == 7:
        return json.dumps(table)[: rng.randrange(len(json.dumps(table)))]
    elif kind == 8:
        table = {k[:4]: v for k, v in table.items()}
    else:
        table[rng.choice(keys)]["flops"] = float("nan")
    return json.dumps(table)


_SUMMARY = re.compile(r"read (\d+) rows.*?imported (\d+) networks?, merged (\d+), rejected (\d+)")


def _accounted(out_file: Path) -> Callable[[int | None, str, str], str]:
    def check(rc: int | None, out: str, err: str) -> str:
        if rc != 0:
            return ""  # a refusal is fine; the file snapshot catches changes
        m = _SUMMARY.search(out + err)
        if not m:
            return "import succeeded without a 'read/imported/merged/rejected' summary"
        read, imported, merged, rejected = map(int, m.groups())
        if read != imported + merged + rejected:
            return f"rows not accounted for: read {read} != {imported}+{merged}+{rejected}"
        if out_file.exists():
            lines = out_file.read_text().splitlines()
            if len(lines) != imported:
                return f"summary says {imported} imported, file holds {len(lines)}"
            for line in lines:
                if "Infinity" in line or "NaN" in line:
                    return "wrote a non-finite number"
        return ""

    return check


def cls_import(ctx: Ctx, n: int) -> None:
    """Corrupted files of every import format; an existing -o without --force."""
    rng = ctx.rng
    table = json.loads(ctx.fixtures["macro.json"].read_text())
    small = dict(list(table.items())[:30])
    ofa_text = ctx.fixtures["ofa.csv"].read_text()
    rows = [json.loads(x) for x in ctx.fixtures["data.jsonl"].read_text().splitlines()[:20]]
    for i in range(n):
        d = ctx.case_dir("import")
        fmt = i % 4
        extra: list[str] = []
        if fmt == 0:
            src, space = "in.json", MACRO_ABS
            (d / src).write_bytes(encode_hostile(rng, _corrupt_json(rng, small)) if rng.random() < 0.2
                                  else _corrupt_json(rng, small).encode())  # fmt: skip
            extra = ["--from", "nas-bench-macro"]
        elif fmt == 1:
            src, space = "in.csv", OFA_ABS
            text = _corrupt_csv(rng, ofa_text)
            (d / src).write_bytes(
                encode_hostile(rng, text) if rng.random() < 0.2 else text.encode()
            )
            extra = ["--from", "ofa"]
        elif fmt == 2:  # generic CSV with canonical JSON architectures
            src, space = "in.csv", MACRO_ABS
            out = io.StringIO()
            w = csv.writer(out, lineterminator="\n")
            w.writerow(["arch", "acc", "Acc!"])
            for r in rows:
                w.writerow([json.dumps(r["arch"]), r["metrics"]["mean_acc"], r["metrics"]["std"]])
            text = _corrupt_csv(rng, out.getvalue())
            (d / src).write_bytes(
                encode_hostile(rng, text) if rng.random() < 0.2 else text.encode()
            )
            metric = rng.choice([["--metric", "acc=acc"], ["--metric", "acc=acc", "--metric", "acc_=Acc!"],
                                 ["--metric", "a=acc", "--metric", "a=Acc!"], ["--metric", "=acc"],
                                 ["--metric", "x=nope"], ["--metric", rng.choice(HOSTILE_TEXT) + "=acc"]])  # fmt: skip
            extra = ["--from", "generic", "--arch", "arch", *metric]
        else:  # generic JSONL with a --map
            src, space = "in.jsonl", MACRO_ABS
            lines = [json.dumps({"a": r["arch"], "m": r["metrics"]["mean_acc"]}) for r in rows]
            text = (
                mutate_text(rng, "\n".join(lines) + "\n")
                if rng.random() < 0.6
                else "\n".join(lines)
            )
            (d / src).write_bytes(
                encode_hostile(rng, text) if rng.random() < 0.2 else text.encode()
            )
            mapping = rng.choice([
                {"arch": "a", "metrics": {"acc": "m"}},
                {"arch": "a", "metrics": {"acc": "m", "ACC": "m"}},
                {"arch": "a", "metrics": {}, "format": "ofa"},
                {"arch": "zz", "metrics": {"acc": "m"}, "delimiter": rng.choice(["", ";;", "\n"])},
                {"arch": ["a"], "metrics": "m"},
                [1, 2],
            ])  # fmt: skip
            (d / "map.json").write_text(json.dumps(mapping))
            extra = ["--from", "generic", "--map", "map.json"]
        out_file = d / "out.jsonl"
        may: tuple[Path, ...] = (out_file,)
        if rng.random() < 0.3:
            out_file.write_text("precious\n")  # must survive: no --force
            may = ()
        skip = ["--skip-bad"] if rng.random() < 0.5 else []
        attack(ctx, "import", f"format{fmt}",
               ["data", "import", *extra, src, "--space", str(space), "-o", "out.jsonl", *skip],
               d, may_change=may, check=_accounted(out_file))  # fmt: skip


def cls_targets(ctx: Ctx, n: int) -> None:
    """Hostile targets, objectives and evaluator specs."""
    rng = ctx.rng
    atoms = ["mean_acc", "std", "params", "flops", "nope", "1e309", "9" * 5000, "0", "-1",
             "__import__", "os.system('touch PWNED')", "mean_acc.real", "mean_acc[0]", "'a'",
             "abs(mean_acc)", "log(params)", "log(0)", "sqrt(-1)", "1/0", "mean_acc/0", "exp(1000)"]  # fmt: skip
    ops = [" + ", " - ", " * ", " / ", " ** ", " and ", " < ", " if ", ", ", " ; ", "", " lambda "]
    for i in range(n):
        d = ctx.case_dir("targets")
        copy_fixture(ctx, "data.jsonl", d)
        target = rng.choice(atoms)
        for _ in range(rng.randint(0, 4)):
            target += rng.choice(ops) + rng.choice(atoms)
        if rng.random() < 0.2:
            target = "(" * 2000 + "mean_acc" + ")" * 2000
        if rng.random() < 0.1:
            target = " + ".join(["mean_acc"] * 3000)
        kind = i % 3
        if kind == 0:
            attack(ctx, "targets", "describe", ["data", "describe", "data.jsonl", "--space",
                   str(MACRO_ABS), "--target", target], d)  # fmt: skip
        elif kind == 1:
            objectives = rng.choice([f"max {target}", f"min {target},max std", target, "",
                                     "max", "max mean_acc,max mean_acc", "up mean_acc", ",,,"])  # fmt: skip
            attack(ctx, "targets", "objectives", ["search", str(MACRO_ABS), "-e", "lookup:data.jsonl",
                   "--objectives", objectives, "--budget", "8", "--init", "4", "--per-generation", "2",
                   "-o", "out", "--no-cache"], d, may_change=tuple(d.glob("out/*")))  # fmt: skip
        else:
            (d / "cfg.json").write_text(rng.choice(['{"kind": "lookup"}', "[1]", '{"lookup": 5}', "{",
                                                     '{"evaluator": "command:' + "x" * 300 + ' {arch}"}']))  # fmt: skip
            os.mkdir(d / "adir")
            spec = rng.choice([
                "lookup:missing.jsonl", "lookup:adir", "lookup:", "predictor:data.jsonl", "predictor:adir",
                "python:os:system", "python:nope:f", "python:", "measure:bogus", "measure:", "measure:params,params",
                "command:", "command:false {arch}", "command:'unterminated", "command:" + "w" * 300 + " {arch}",
                "@cfg.json", "@missing.json", "@", "nope", rng.choice(HOSTILE_TEXT),
                "command:echo '{\"acc\": 1e999}' # {arch}", "command:echo nan # {arch}",
            ])  # fmt: skip
            attack(ctx, "targets", "evaluator", ["search", str(MACRO_ABS), "-e", spec, "--objectives",
                   "max acc", "--budget", "3", "--init", "3", "-o", "out", "--no-cache"], d,
                   may_change=tuple(d.glob("out/*")), timeout=90)  # fmt: skip


def cls_arch(ctx: Ctx, n: int) -> None:
    """Malformed architecture files through validate, graph, predict, emit."""
    rng = ctx.rng
    archs = [json.loads(x)["arch"] for x in ctx.fixtures["archs.jsonl"].read_text().splitlines()]
    for _ in range(n):
        d = ctx.case_dir("arch")
        a = json.loads(json.dumps(rng.choice(archs)))
        kind = rng.randrange(10)
        if kind == 0:
            a["space"] = rng.choice(["other", "", None, 5])
        elif kind == 1:
            st = a["stages"][rng.choice(list(a["stages"]))]
            st[rng.choice(["depth", "choices", "layers", "extra"])] = rng.choice(
                [
                    None,
                    -1,
                    2147483648,
                    int("9" * 5000),
                    "2",
                    [],
                    {},
                    {"x": 1},
                    1e309 if False else 1.5,
                ]
            )
        elif kind == 2:
            st = a["stages"][rng.choice(list(a["stages"]))]
            st["layers"] = st["layers"] * rng.choice([0, 2, 1000])
        elif kind == 3:
            st = a["stages"][rng.choice(list(a["stages"]))]
            st["layers"][0] = rng.choice(
                [{"op": "conv"}, {"op": None}, {}, "identity", {"op": "mb_e3k3", "x": 1}]
            )
        elif kind == 4:
            a["stages"]["s9"] = a["stages"]["s1"]
        elif kind == 5:
            del a["stages"][rng.choice(list(a["stages"]))]
        elif kind == 6:
            a["globals"] = rng.choice([[], {"resolution": 224}, None, {"": ""}])
        text = json.dumps(a if rng.random() < 0.5 else {"arch": a})
        if kind == 7:
            text = mutate_text(rng, text)
        if kind == 8:
            text = '{"a":' * rng.choice([2000, 200000]) + "1" + "}" * 10
        if kind == 9:
            text = json.dumps(a) + "\n" + json.dumps(a)[:-3]
        raw = encode_hostile(rng, text) if rng.random() < 0.2 else text.encode()
        (d / "a.json").write_bytes(raw)
        run = copy_fixture(ctx, "run1", d)
        cmd = rng.choice([
            ["validate", str(MACRO_ABS), "a.json"],
            ["graph", str(MACRO_ABS), "a.json", "--json"],
            ["graph", str(MACRO_ABS), "a.json", "--line", rng.choice(["2", "0", "-1", "99999999999999999999"])],
            ["predict", "run1", "a.json"],
            ["emit", str(MACRO_ABS), "a.json", "-o", "m.pt"],
        ])  # fmt: skip
        attack(ctx, "arch", f"kind{kind}", cmd, d, may_change=(d / "m.pt",), timeout=90)
        del run


def _rows(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def _group_alive(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    alive = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat_file.parent.name))
    return alive


def _kill_then(ctx: Ctx, argv: list[str], cwd: Path, delay: float) -> None:
    """kill -9 the abc process only (as a user would); its workers must follow it."""
    proc = _spawn(argv, cwd)
    time.sleep(delay)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    deadline = time.monotonic() + 5
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    leftover = _group_alive(proc.pid)
    if leftover:
        record(ctx, "kill9", "workers outlived kill -9 by 5 s", argv, None, "", False, 0,
               f"processes left: {leftover}")  # fmt: skip
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def cls_kill9(ctx: Ctx, n: int) -> None:
    """kill -9 mid-run of measure / train / search, then resume: the same rows as a clean run."""
    rng = ctx.rng
    clean: dict[str, object] = {}
    for i in range(n):
        d = ctx.case_dir("kill9")
        kind = i % 3
        copy_fixture(ctx, "archs.jsonl", d)
        copy_fixture(ctx, "data.jsonl", d)
        copy_fixture(ctx, "full.jsonl", d)
        delay = rng.uniform(0.8, 5.0)
        if kind == 0:
            jobs = rng.choice(["1", "2"])
            base = ["measure", str(MACRO_ABS), "archs.jsonl", "--metrics", "params,macs", "--device",
                    "meta", "--jobs", jobs, "-o", "m.jsonl"]  # fmt: skip
            _kill_then(ctx, base, d, delay)

            def check(rc, out, err, d=d):
                if rc != 0:
                    return f"resume failed: {err.strip()[-200:]}"
                rows = _rows(d / "m.jsonl")
                keys = [json.dumps(r["arch"], sort_keys=True) for r in rows]
                if len(set(keys)) != len(keys):
                    return f"duplicates after resume: {len(keys)} rows, {len(set(keys))} distinct"
                want = len({json.dumps(a, sort_keys=True) for a in _rows(d / "archs.jsonl")})
                if len(set(keys)) < want:
                    return f"rows missing after resume: {len(set(keys))} of {want}"
                return ""

            attack(ctx, "kill9", f"measure jobs={jobs} after {delay:.1f}s", [*base, "--resume"], d,
                   may_change=(d / "m.jsonl",), check=check, timeout=180)  # fmt: skip
        elif kind == 1:
            jobs = rng.choice(["1", "2"])
            base = ["train", str(MACRO_ABS), "data.jsonl", "--target", "mean_acc", "-o", "run",
                    "--epochs", "3", "--folds", "3", "--jobs", jobs, "--quiet"]  # fmt: skip
            _kill_then(ctx, base, d, delay + 2)
            # An unfinished run must not be used silently.
            attack(ctx, "kill9", "predict on a killed run", ["predict", "run", "archs.jsonl"], d,
                   may_change=tuple((d / "run").rglob("*")), timeout=90,
                   check=lambda rc, out, err, d=d: "" if rc != 0 or "warn" in err.lower() or "member" in err.lower()
                   or not _unfinished(d / "run") else "predict used an unfinished run silently")  # fmt: skip

            def check(rc, out, err, d=d):
                if rc != 0:
                    return f"resume failed: {err.strip()[-200:]}"
                members = (
                    [p for p in (d / "run" / "members").iterdir()]
                    if (d / "run" / "members").exists()
                    else []
                )
                if not (d / "run" / "metrics.json").exists():
                    return "no metrics.json after resume"
                return "" if len(members) >= 3 else f"only {len(members)} members after resume"

            attack(ctx, "kill9", f"train jobs={jobs}", [*base, "--resume"], d,
                   may_change=(*(d / "run").rglob("*"), d / "run"), check=check, timeout=240)  # fmt: skip
        else:
            base = ["search", str(MACRO_ABS), "-e", "lookup:full.jsonl", "--objectives",
                    "max mean_acc,min params", "--budget", "60", "--init", "10", "--per-generation",
                    "5", "--seed", "3", "-o", "s", "--no-cache"]  # fmt: skip
            if "search" not in clean:
                ref = ctx.case_dir("kill9ref")
                copy_fixture(ctx, "full.jsonl", ref)
                subprocess.run([*ABC, *base], cwd=ref, env=ENV, capture_output=True)
                clean["search"] = [
                    json.dumps(r, sort_keys=True) for r in _rows(ref / "s" / "evaluated.jsonl")
                ]
            _kill_then(ctx, base, d, delay)

            def check(rc, out, err, d=d):
                if rc != 0:
                    return f"resume failed: {err.strip()[-200:]}"
                got = [json.dumps(r, sort_keys=True) for r in _rows(d / "s" / "evaluated.jsonl")]
                want = clean["search"]
                if len(got) != len(want):
                    return f"resumed search has {len(got)} records, clean run {len(want)}"
                if sorted(got) != sorted(want):
                    return "resumed search records differ from a clean run"
                return ""

            attack(ctx, "kill9", f"search after {delay:.1f}s", base, d,
                   may_change=tuple((d / "s").rglob("*")), check=check, timeout=180)  # fmt: skip


def _unfinished(run: Path) -> bool:
    return not (run / "metrics.json").exists()


def cls_concurrent(ctx: Ctx, n: int) -> None:
    """Two writers on one output at once: one wins, the other is refused; nothing duplicated."""
    rng = ctx.rng
    for i in range(n):
        d = ctx.case_dir("concurrent")
        copy_fixture(ctx, "archs.jsonl", d)
        copy_fixture(ctx, "data.jsonl", d)
        copy_fixture(ctx, "full.jsonl", d)
        kind = i % 4
        if kind == 0:
            resume = ["--resume"] if rng.random() < 0.5 else []
            argv = ["measure", str(MACRO_ABS), "archs.jsonl", "--metrics", "params", "--device", "meta",
                    "-o", "m.jsonl", *resume]  # fmt: skip
            out_name = "m.jsonl"
        elif kind == 1:
            argv = ["search", str(MACRO_ABS), "-e", "lookup:full.jsonl", "--objectives", "max mean_acc",
                    "--budget", "30", "--init", "10", "-o", "s", "--no-cache"]  # fmt: skip
            out_name = "s/evaluated.jsonl"
        elif kind == 2:
            argv = ["data", "import", "--from", "nas-bench-macro", str(ctx.fixtures["macro.json"]),
                    "--space", str(MACRO_ABS), "-o", "i.jsonl"]  # fmt: skip
            out_name = "i.jsonl"
        else:
            argv = ["sample", str(MACRO_ABS), "-n", "500", "--distinct", "-o", "x.jsonl"]
            out_name = "x.jsonl"
        start = time.monotonic()
        procs = [_spawn(argv, d) for _ in range(2)]
        results = [_finish(p, ctx.timeout * 2) for p in procs]
        seconds = time.monotonic() - start
        codes = [r[0] for r in results]
        err = "\n".join(r[2] for r in results)
        hang = any(r[3] for r in results)
        lost = ""
        out = d / out_name
        if not hang:
            if codes.count(0) == 0:
                lost = "" if any(c == 1 for c in codes) else f"neither writer succeeded: {codes}"
            if out.exists():
                rows = _rows(out) if out.suffix == ".jsonl" else []
                key = "index" if kind == 1 else "arch"
                keys = [json.dumps(r.get(key), sort_keys=True) for r in rows]
                if len(set(keys)) != len(keys):
                    lost = f"duplicate rows: {len(keys)} rows, {len(set(keys))} distinct ({codes})"
            elif 0 in codes:
                lost = "a writer reported success but the output is missing"
        record(
            ctx,
            "concurrent",
            f"kind{kind}",
            argv,
            max(c or 0 for c in codes),
            err,
            hang,
            seconds,
            lost,
        )


def cls_paths(ctx: Ctx, n: int) -> None:
    """Odd output paths: read-only folders, folders, missing parents, links, long or odd names."""
    rng = ctx.rng
    for _ in range(n):
        d = ctx.case_dir("paths")
        copy_fixture(ctx, "archs.jsonl", d)
        copy_fixture(ctx, "data.jsonl", d)
        copy_fixture(ctx, "run1", d)
        ro = d / "ro"
        ro.mkdir()
        (d / "adir").mkdir()
        (d / "exists.txt").write_text("precious\n")
        (d / "target.txt").write_text("precious target\n")
        os.symlink("target.txt", d / "link.txt")
        os.symlink("nowhere/x", d / "dangling")
        kind = rng.choice(
            ["ro", "dir", "missing", "exists", "link", "dangling", "long", "odd", "devnull"]
        )
        path = {
            "ro": "ro/out", "dir": "adir", "missing": "no/such/dir/out", "exists": "exists.txt",
            "link": "link.txt", "dangling": "dangling", "long": "x" * 300, "odd": rng.choice(
                ["-", "--force", " ", "a\nb", "é💥.jsonl", "[red]x[/]", ":smile:.json", "."]),
            "devnull": "/dev/null",
        }[kind]  # fmt: skip
        cmd = rng.choice([
            ["sample", str(MACRO_ABS), "-n", "2", "-o", path],
            ["compile", str(MACRO_ABS), "--spec", path],
            ["data", "import", "--from", "nas-bench-macro", str(ctx.fixtures["macro.json"]), "--space",
             str(MACRO_ABS), "-o", path],
            ["measure", str(MACRO_ABS), "archs.jsonl", "--metrics", "params", "--device", "meta", "-o", path],
            ["predict", "run1", "archs.jsonl", "-o", path],
            ["rank", "run1", "-o", path + (".csv" if kind not in ("exists", "link", "dir") else "")],
            ["build", "run1", "-o", path, "-n", "2", "--quiet"],
            ["search", str(MACRO_ABS), "-e", "lookup:data.jsonl", "--objectives", "max mean_acc", "--budget",
             "5", "--init", "5", "-o", path, "--no-cache"],
            ["train", str(MACRO_ABS), "data.jsonl", "--target", "mean_acc", "-o", path, "--epochs", "1", "--quiet"],
            ["emit", str(MACRO_ABS), "archs.jsonl", "--line", "1", "-o", path],
            ["plot", "--data", "data.jsonl", "--x", "min params", "--y", "max mean_acc", "-o",
             path + (".png" if kind not in ("exists", "link", "dir") else "")],
            ["fmt", "-w", path],
        ])  # fmt: skip
        os.chmod(ro, stat.S_IRUSR | stat.S_IXUSR)
        may = tuple(
            p for p in d.rglob("*") if p.is_file() and d / "run1" in p.parents and cmd[0] == "rank"
        )
        try:
            attack(ctx, "paths", kind, cmd, d, may_change=may, timeout=90)
        finally:
            os.chmod(ro, stat.S_IRWXU)


def cls_newer(ctx: Ctx, n: int) -> None:
    """abc build (several runs, --score last), abc sample --distinct, nas-bench-macro merges."""
    rng = ctx.rng
    for i in range(n):
        d = ctx.case_dir("newer")
        kind = i % 3
        if kind == 0:
            copy_fixture(ctx, "run1", d)
            copy_fixture(ctx, "run2", d)
            runs = rng.choice(
                [["run1", "run2"], ["run1", "run1"], ["run1", "run2", "run1"], ["run1", "nope"]]
            )
            if rng.random() < 0.3:  # a damaged run
                victim = d / rng.choice(["run1", "run2"])
                target = rng.choice(list(victim.rglob("*.json")) or [victim / "config.json"])
                target.write_text(mutate_text(rng, target.read_text()) if target.exists() else "{")
            k = rng.choice(
                [
                    "1",
                    "2",
                    "3",
                    "0",
                    "-1",
                    "9" * 30,
                    "s1=2",
                    "s1=1,s2=1,s3=1",
                    "zz=1",
                    "1,2",
                    "",
                    "1,1,1,1",
                ]
            )
            opts = ["-k", k] if rng.random() < 0.8 else []
            opts += rng.choice(
                [
                    [],
                    ["--score", "last"],
                    ["--score", "pooled"],
                    ["--standardize"],
                    ["--mode", "constrained"],
                    ["--globals", "x=1"],
                    ["--all-globals"],
                ]
            )
            opts += ["-n", rng.choice(["0", "1", "5", "100000"])]
            attack(ctx, "newer", "build", ["build", *runs, "-o", "out", *opts, "--quiet"], d,
                   may_change=tuple(), timeout=120)  # fmt: skip
        elif kind == 1:
            text = MACRO_ABS.read_text()
            if rng.random() < 0.5:  # a small space: --distinct must not spin forever
                text = text.replace(
                    "        | mbconv(out = width, stride = 2, expand = 6, kernel = 5, divisor = 1) as mb_e6k5\n",
                    "",
                )
            (d / "s.abs").write_text(text)
            count = rng.choice(["5", "300", "7000", "100000"])

            def check(rc, out, err, count=count):
                if rc == 0:
                    lines = [x for x in out.splitlines() if x.strip()]
                    keys = {json.dumps(json.loads(x), sort_keys=True) for x in lines}
                    if len(keys) != len(lines):
                        return "--distinct printed a duplicate"
                return ""

            attack(ctx, "newer", f"sample --distinct -n {count}",
                   ["sample", "s.abs", "-n", count, "--distinct", "--seed", str(i)], d, check=check)  # fmt: skip
        else:
            table = json.loads(ctx.fixtures["macro.json"].read_text())
            keys = list(table)[: rng.choice([10, 60])]
            sub = {k: table[k] for k in keys}
            # equivalent networks: identity in a non-stride position equals another placement
            if rng.random() < 0.5:
                k = keys[0]
                sub[k]["mean_acc"] = rng.choice(
                    [1e308, -1e308, 0, float("inf") if False else 1e300]
                )
            (d / "in.json").write_text(json.dumps(sub))
            other = d / "in2.json"
            other.write_text(json.dumps(sub))
            files = ["in.json"] + (["in2.json"] if rng.random() < 0.5 else [])
            out_file = d / "o.jsonl"
            attack(ctx, "newer", "import nas-bench-macro merge",
                   ["data", "import", "--from", "nas-bench-macro", *files, "--space", str(MACRO_ABS), "-o", "o.jsonl"],
                   d, may_change=(out_file,), check=_accounted(out_file))  # fmt: skip


CLASSES: dict[str, Callable[[Ctx, int], None]] = {
    "abs": cls_abs,
    "huge": cls_huge,
    "import": cls_import,
    "targets": cls_targets,
    "arch": cls_arch,
    "kill9": cls_kill9,
    "concurrent": cls_concurrent,
    "paths": cls_paths,
    "newer": cls_newer,
}


def table(outcomes: list[Outcome]) -> Iterator[str]:
    yield "| class | cases | exit-3 | hangs | lost |"
    yield "|---|---:|---:|---:|---:|"
    total = [0, 0, 0, 0]
    for cls in dict.fromkeys(o.cls for o in outcomes):
        rows = [o for o in outcomes if o.cls == cls]
        counts = [
            len(rows),
            sum(o.exit3 for o in rows),
            sum(o.hang for o in rows),
            sum(bool(o.lost) for o in rows),
        ]
        total = [a + b for a, b in zip(total, counts, strict=True)]
        yield f"| {cls} | " + " | ".join(map(str, counts)) + " |"
    yield "| **all** | " + " | ".join(map(str, total)) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=8, help="cases per class")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    parser.add_argument("--only", default="", help="comma-separated classes")
    parser.add_argument("--work", type=Path, help="keep the case folders here")
    parser.add_argument("--markdown", type=Path, help="append the table to this file")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="abc-attack-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(work, random.Random(args.seed), args.timeout, args.verbose)
    cpu0, wall0 = time.process_time(), time.monotonic()
    children0 = os.times()
    setup(ctx)
    for name in args.only.split(",") if args.only else CLASSES:
        CLASSES[name](ctx, args.cases)
    lines = list(table(ctx.outcomes))
    t = os.times()
    cpu = (
        time.process_time()
        - cpu0
        + (t.children_user + t.children_system)
        - (children0.children_user + children0.children_system)
    )
    print("\n".join(lines))
    print(
        f"wall {time.monotonic() - wall0:.0f} s, cpu (with children) {cpu:.0f} s, seed {args.seed}, work {work}"
    )
    if args.markdown:
        with args.markdown.open("a") as f:
            f.write(f"\n## Hostile run (seed {args.seed}, {args.cases} cases per class)\n\n")
            f.write("\n".join(lines) + "\n")
    bad = [o for o in ctx.outcomes if o.exit3 or o.hang or o.lost]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
