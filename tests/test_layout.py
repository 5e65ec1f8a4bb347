"""Structure rules: components never import Prefect; every config file composes."""
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from flows.config import register, to_pipeline_config

REPO = Path(__file__).resolve().parents[1]


def test_components_do_not_import_prefect():
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for pkg in ("components", "tokenizer")
        for p in (REPO / pkg).rglob("*.py")
    )
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "assert 'prefect' not in sys.modules, 'a component imported prefect'\n"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=300)


def test_config_files_import_no_heavy_libraries():
    """The flow composes configs before any work: config modules must stay light."""
    code = "import sys, flows.config\nheavy = {'torch', 'transformers', 'datatrove', 'prefect'} & set(sys.modules)\n"
    code += "assert not heavy, heavy\n"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


@pytest.mark.parametrize("experiment", [None] + sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_validates(experiment):
    register()
    overrides = [f"experiment={experiment}"] if experiment else []
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = to_pipeline_config(compose("config", overrides=overrides))
    assert cfg.run.until == "eval"


def test_yaml_mirrors_dataclass_fields():
    """conf/<stage>/default.yaml names every field of the stage's dataclass, no more."""
    import dataclasses

    import yaml

    from components.stages import STAGES

    for name, stage in STAGES.items():
        data = yaml.safe_load((REPO / "conf" / name / "default.yaml").read_text()) or {}
        fields = {f.name for f in dataclasses.fields(stage.config_type())}
        assert set(data) == fields, f"conf/{name}/default.yaml vs {stage.config_class}: {set(data) ^ fields}"
    from components.train.config import LauncherConfig

    data = yaml.safe_load((REPO / "conf" / "launcher" / "single.yaml").read_text())
    fields = {f.name for f in dataclasses.fields(LauncherConfig)}
    assert set(data) == fields, f"conf/launcher/single.yaml vs LauncherConfig: {set(data) ^ fields}"


def _sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (REPO / pkg).rglob("*.py"))


def test_no_function_in_components_is_over_60_lines():
    import ast

    long = [f"{p.relative_to(REPO)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in _sources("components", "tokenizer") for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert long == []


def test_no_import_cycle_between_repo_modules():
    """Module-level imports only: an import inside a function runs when called, after every module loaded."""
    import ast

    def name_of(path: Path) -> str:
        parts = path.relative_to(REPO).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name_of(p): p for p in _sources("components", "tokenizer", "flows")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                found |= {base} | {f"{base}.{a.name}" for a in node.names}
        edges[name] = {m for m in found if m in modules and m != name}
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(edges[name]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join(path[path.index(dep):] + [name, dep])
            if dep not in state:
                visit(dep, path + [name])
        state[name] = 2

    for name in sorted(modules):
        if name not in state:
            visit(name, [])
