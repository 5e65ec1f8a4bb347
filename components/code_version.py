"""Which code computes a stage: the import closure of its entry modules, found statically.

The closure is every repo file reachable from the entry modules through `import x`,
`from x import y` (y a submodule too), relative imports, imports inside functions (stages
import lazily) and `importlib.import_module("literal")`, with each package's __init__.py on
the way. Nothing is imported. Third-party imports are collected as top-level names so their
installed versions can go into the key. Files outside the repo never enter; a stage
that imports test code (tests/, conftest, test_*) is an error naming the line.

A file counts by its bytecode without docstrings and line numbers (`parse`): editing a comment,
a docstring or the layout of a file rebuilds nothing; editing what it does rebuilds its stages.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path
from typing import Iterable

TEST_CODE = frozenset({"tests", "conftest"})  # top-level names of test code: a stage importing them is an error

_parsed: dict[tuple, tuple[str, tuple]] = {}  # (path, size, mtime, inode) -> (digest, imports): a file is parsed once
_BODIES = ("body", "orelse", "finalbody", "handlers", "cases")  # the fields through which statements nest
_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _statements(node: ast.AST):
    """Every statement under `node`, dropping docstrings on the way: expressions are never
    visited (most of a tree), so this is several times faster than ast.walk."""
    for field in _BODIES:
        body = getattr(node, field, None)
        if not body:
            continue
        if field == "body" and isinstance(node, _DOCUMENTED) and _is_docstring(body[0]):
            node.body = body = body[1:] or [ast.copy_location(ast.Pass(), body[0])]
        for child in body:
            yield child
            yield from _statements(child)


def _imports(tree: ast.Module, text: str) -> tuple[tuple[int, str, tuple[str, ...], int], ...]:
    """(level, module, names, line) for every import anywhere in the file (`import a.b` is (0, "a.b", (), line));
    strips the docstrings from `tree` as it goes."""
    found = []
    for node in _statements(tree):
        if isinstance(node, ast.Import):
            found += [(0, alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", tuple(alias.name for alias in node.names), node.lineno))
    if "import_module(" in text:  # importlib.import_module("literal"): only then walk the expressions
        found += [(0, node.args[0].value, (), node.lineno) for node in ast.walk(tree) if isinstance(node, ast.Call)
                  and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
                  and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)]
    return tuple(found)


def parse(path: Path, text: str | None = None) -> tuple[str, tuple]:
    """(code digest, imports) of one Python file; `text` stands in for the file's content (tests)."""
    if text is None:
        stat = path.stat()
        memo = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if memo not in _parsed:
            _parsed[memo] = parse(path, path.read_text(encoding="utf-8"))
        return _parsed[memo]
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as err:
        raise SyntaxError(f"{path}:{err.lineno}: cannot fingerprint the stage's code: {err.msg}") from err
    imports = _imports(tree, text)  # also drops the docstrings: they are no part of the digest
    return _bytecode_digest(compile(tree, "<stage code>", "exec", dont_inherit=True, optimize=0)), imports


def _bytecode_digest(code: types.CodeType) -> str:
    """sha256 of what a code object does, without its line numbers and file name: comments and layout
    do not count. (Twice as fast as hashing ast.dump, and planning parses every stage's files.)"""
    parts = (code.co_code, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars, code.co_flags,
             code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, getattr(code, "co_exceptiontable", b""),
             tuple(_constant(c) for c in code.co_consts))
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _constant(value: object) -> object:
    """A code object's constant in a form whose repr is stable across processes (a frozenset's
    order follows the per-process string hash seed)."""
    if isinstance(value, types.CodeType):
        return _bytecode_digest(value)
    if isinstance(value, tuple):
        return tuple(_constant(v) for v in value)
    if isinstance(value, frozenset):
        return ("frozenset", tuple(sorted(repr(_constant(v)) for v in value)))
    return type(value).__name__, repr(value)


def module_file(name: str, root: Path) -> Path | None:
    """The repo file of a dotted module name (a.b -> a/b.py or a/b/__init__.py), if there is one."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_name(base.name + ".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _absolute(level: int, module: str, path: Path, root: Path) -> str:
    """`from ..x import y` in `path` -> the dotted name it means."""
    if not level:
        return module
    package = list(path.relative_to(root).parts[:-1])  # both for a/b/m.py and a/b/__init__.py: a.b
    if level - 1 > len(package) or (level - 1 == len(package) and not module):
        raise ImportError(f"{path}: relative import beyond the repo root (level {level})")
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _candidates(level: int, module: str, names: tuple[str, ...], path: Path, root: Path) -> list[str]:
    """The dotted module names an import statement may load: the module and its `from`-names (modules
    or not: the walk finds out); the packages above them are the walk's business."""
    target = _absolute(level, module, path, root)
    return [target] + [f"{target}.{n}" for n in names if n != "*"]


def _package_root(top: str) -> Path | None:
    """The folder holding an importable top-level package outside the repo (found, not imported)."""
    spec = importlib.util.find_spec(top)
    if spec is None or top in sys.stdlib_module_names:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve().parent
    return Path(spec.origin).resolve().parent if spec.origin else None


class Closure:
    """The repo files and the third-party top-level names reachable from the entry modules."""

    def __init__(self, entries: Iterable[str], root: Path, overrides: dict[str, str] | None = None):
        self.root, self.overrides = Path(root).resolve(), dict(overrides or {})
        # top-level name -> the folder holding it: the repo's packages, plus the package of an entry
        # module that lives elsewhere (a stage of the user's own, registered with register_stage)
        self.roots = {p.stem if p.suffix == ".py" else p.name: self.root for p in self.root.iterdir()
                      if p.suffix == ".py" or (p / "__init__.py").is_file()}
        self.files: dict[str, str] = {}  # root-relative posix path -> code digest
        self.seen: set[str] = set()  # dotted names visited (modules, packages, or neither)
        self.libraries: set[str] = set()
        for entry in entries:
            top = entry.split(".")[0]
            if top not in self.roots and (found := _package_root(top)) is not None:
                self.roots[top] = found
            if top not in self.roots or module_file(entry, self.roots[top]) is None:
                raise ModuleNotFoundError(f"code version: entry module {entry!r} is not a file under {self.root}"
                                          " nor an importable package's")
            self._visit(entry)

    @property
    def repo_names(self) -> set[str]:
        return set(self.roots)

    def _visit(self, name: str) -> None:
        """Add the module `name` (and the packages above it: importing a.b.c runs a/__init__.py and
        a/b/__init__.py first) with what it imports; a name that is no repo module adds nothing
        (`from pkg import function`)."""
        if name in self.seen:
            return
        self.seen.add(name)
        if "." in name:
            self._visit(name.rpartition(".")[0])
        root = self.roots[name.split(".")[0]]
        path = module_file(name, root)
        if path is None:
            return
        rel = path.relative_to(root).as_posix()
        digest, imports = parse(path, self.overrides.get(rel))
        self.files[rel] = digest
        for level, module, names, line in imports:
            for candidate in _candidates(level, module, names, path, root):
                top = candidate.partition(".")[0]
                if top in TEST_CODE or (top in self.roots and candidate.rpartition(".")[2].startswith("test_")
                                        and module_file(candidate, self.roots[top])):
                    raise ImportError(f"{rel}:{line}: imports {candidate!r}, test code: a stage must not depend on tests")
                if top in self.roots:
                    self._visit(candidate)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    self.libraries.add(top)

    def digest(self) -> str:
        blob = "".join(f"{rel}\0{digest}\0" for rel, digest in sorted(self.files.items()))
        return hashlib.sha256(blob.encode()).hexdigest()


@functools.cache
def _installed() -> tuple[tuple[str, metadata.Distribution], ...]:
    """(normalised name, distribution) of everything installed; the name from the dist-info
    directory where the finder gives one (parsing every METADATA costs a tenth of a second)."""
    return tuple((getattr(d, "_normalized_name", None) or d.metadata["Name"].lower().replace("-", "_"), d)
                 for d in metadata.distributions())


@functools.cache
def _declared_top_levels() -> dict[str, metadata.Distribution]:
    """{top-level import name: distribution} from the distributions' top_level.txt (cheap, unlike
    metadata.packages_distributions, which reads every RECORD: half a second)."""
    found: dict[str, metadata.Distribution] = {}
    for _, dist in _installed():
        for name in (dist.read_text("top_level.txt") or "").split():
            found.setdefault(name, dist)
    return found


@functools.cache
def distribution(import_name: str) -> tuple[str, str] | None:
    """(distribution, version) installed for a top-level import name; None when it is not installed."""
    try:
        return import_name, metadata.version(import_name)
    except metadata.PackageNotFoundError:  # the import name is not the distribution's (yaml: PyYAML)
        pass
    if importlib.util.find_spec(import_name) is None:
        return None  # an optional library that is not installed (ray)
    dist = _declared_top_levels().get(import_name) or _named_after(import_name)
    if dist is not None:
        return dist.metadata["Name"], dist.version
    name = next(iter(metadata.packages_distributions().get(import_name, [])), None)  # slow, last resort
    return (name, metadata.version(name)) if name else None


def _named_after(import_name: str) -> metadata.Distribution | None:
    """A distribution without top_level.txt whose name contains the import name and whose files
    hold it (faust-cchardet: cchardet/): reads only those few RECORDs."""
    for name, dist in _installed():
        if import_name.lower() in name and any(
                f.parts[0] in (import_name, f"{import_name}.py") or f.parts[0].startswith(f"{import_name}.")
                for f in dist.files or ()):
            return dist
    return None


def library_versions(import_names: Iterable[str]) -> dict[str, str]:
    """{distribution: version} for the installed ones among the names (optional ones may be absent)."""
    found = (distribution(name) for name in sorted(set(import_names)))
    return dict(sorted(item for item in found if item))


def git_state(root: Path, paths: Iterable[str] | None = None) -> dict:
    """{"commit", "dirty"} of the checkout at `root`, dirty limited to `paths` when given; None where
    git is missing, the tree is no checkout or git fails: recorded, never a reason to fail a stage."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--", *(paths or ["."])) if commit else None
    return {"commit": commit.strip() if commit else None, "dirty": None if status is None else bool(status.strip())}
