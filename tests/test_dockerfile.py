"""The Dockerfile, parsed (no Docker engine runs here): a multi-stage build whose final
image runs `abtest-exporter serve` as a non-root user, with /data as a volume."""

from __future__ import annotations

import fnmatch
import io
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from exporter.cli import build_parser, settings_from

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "python3-dev", "libc6-dev", "git")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [value for kind, value in self.instructions if kind == instruction]


def stages(text: str) -> list[Stage]:
    parser = DockerfileParser(fileobj=io.StringIO(text))
    args: dict[str, str] = {}
    result: list[Stage] = []
    for item in parser.structure:
        kind, value = item["instruction"], item["value"]
        if kind == "ARG" and not result and "=" in value:
            name, default = value.split("=", 1)
            args[name] = default
        elif kind == "FROM":
            words = value.split()
            base = words[0]
            for name, default in args.items():
                base = base.replace("${" + name + "}", default)
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            result.append(Stage(base, alias))
        elif kind != "COMMENT" and result:
            result[-1].instructions.append((kind, value))
    return result


def problems(text: str) -> list[str]:
    """What keeps a Dockerfile from being the image the chart expects (empty: none)."""
    found = []
    built = stages(text)
    if len(built) < 2:
        return ["not a multi-stage build"]
    final = built[-1]
    if not final.base.startswith("python:") or not final.base.endswith("-slim"):
        found.append(f"final base {final.base} is not a slim Python image")
    users = final.values("USER")
    if not users:
        found.append("no USER: the image would run as root")
    elif users[-1].split(":")[0] in ("0", "root"):
        found.append(f"USER {users[-1]} is root")
    elif users[-1].split(":")[0] != "65532":
        found.append(f"USER {users[-1]} is not 65532 (the chart's runAsUser)")
    if final.values("ENTRYPOINT")[-1:] != ['["abtest-exporter"]']:
        found.append(f"ENTRYPOINT is {final.values('ENTRYPOINT')}")
    cmd = final.values("CMD")
    if not cmd or json.loads(cmd[-1])[:1] != ["serve"]:
        found.append(f"CMD is {cmd}, not serve")
    if "/data" not in " ".join(final.values("VOLUME")):
        found.append("no VOLUME /data")
    if "9470" not in " ".join(final.values("EXPOSE")).split():
        found.append("port 9470 not exposed")
    for command in final.values("RUN"):
        words = command.replace("&&", " ").replace(";", " ").split()
        if "pip" in " ".join(words) and "install" in words:
            found.append(f"the final stage installs Python packages: {command}")
        found += [f"the final stage installs {tool}" for tool in BUILD_TOOLS if tool in words]
    builder = {stage.name for stage in built[:-1]}
    copies = [c for c in final.values("COPY") if c.startswith("--from=")]
    if not any(c.split()[0].removeprefix("--from=") in builder for c in copies):
        found.append("the final stage copies nothing from the builder stage")
    return found


@pytest.fixture(scope="module")
def text() -> str:
    return DOCKERFILE.read_text()


def test_the_dockerfile_has_no_problem(text: str) -> None:
    assert problems(text) == []


def test_final_stage(text: str) -> None:
    *builders, final = stages(text)
    assert [b.name for b in builders] == ["builder"]
    assert final.base == builders[0].base == "python:3.11-slim"
    assert final.values("USER") == ["65532:65532"]
    assert final.values("ENTRYPOINT") == ['["abtest-exporter"]']
    assert json.loads(final.values("CMD")[0]) == ["serve", "--data-dir", "/data"]
    assert final.values("VOLUME") == ["/data"]
    assert final.values("EXPOSE") == ["9470 4318"]
    assert final.values("COPY") == ["--from=builder /opt/venv /opt/venv"]
    (run,) = final.values("RUN")
    assert "useradd --system --uid 65532" in run
    assert "chown 65532:65532 /data" in run
    assert any("PATH=/opt/venv/bin:$PATH" in env for env in final.values("ENV"))
    # USER comes after the last RUN: nothing else runs as root at build time after it
    kinds = [kind for kind, _ in final.instructions]
    assert kinds.index("USER") > max(i for i, kind in enumerate(kinds) if kind == "RUN")


def test_builder_installs_the_package_and_drops_pip(text: str) -> None:
    builder = stages(text)[0]
    (install,) = [r for r in builder.values("RUN") if "pip install" in r]
    assert '/opt/venv/bin/pip install ".[fast]"' in install  # the image serves on uvloop
    assert "pip uninstall --yes pip" in install
    assert "abtest-exporter --version" in install  # the console script works in the venv


def test_entry_point_and_command_are_the_real_cli(text: str) -> None:
    final = stages(text)[-1]
    (entry_point,) = json.loads(final.values("ENTRYPOINT")[0])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[entry_point] == "exporter.cli:main"
    args = build_parser().parse_args(json.loads(final.values("CMD")[0]))
    settings = settings_from(args, environ={})
    assert (args.command, settings.data_dir, settings.port) == ("serve", "/data", 9470)


def test_the_image_matches_the_chart(text: str) -> None:
    final = stages(text)[-1]
    values = yaml.safe_load((ROOT / "helm" / "abtest-exporter" / "values.yaml").read_text())
    user, group = final.values("USER")[0].split(":")
    assert values["podSecurityContext"]["runAsUser"] == int(user)
    assert values["podSecurityContext"]["fsGroup"] == int(group)
    assert values["dataDir"] == final.values("VOLUME")[0]
    assert str(values["port"]) in final.values("EXPOSE")[0].split()
    assert str(values["otlp"]["port"]) in final.values("EXPOSE")[0].split()


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for plain paths: the last matching pattern wins."""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_sends_what_the_build_copies_and_nothing_else(text: str) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied: list[str] = []
    for stage in stages(text):
        for copy in stage.values("COPY"):
            if not copy.startswith("--from="):
                copied += copy.split()[:-1]
    assert copied == ["pyproject.toml", "README.md", "exporter"]
    for source in copied:
        assert (ROOT / source).exists()
        assert not _ignored(source, patterns), source
    assert not _ignored("exporter/cli.py", patterns)
    for local in (
        ".venv/bin/python",
        "data/abtest.sqlite3",
        "tests/test_cli.py",
        ".git/HEAD",
        "exporter/__pycache__/cli.cpython-311.pyc",
        "helm/abtest-exporter/Chart.yaml",
    ):
        assert _ignored(local, patterns), local


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (("USER 65532:65532\n", ""), "no USER"),
        (("USER 65532:65532", "USER root"), "is root"),
        (("USER 65532:65532", "USER 1000"), "not 65532"),
        (('ENTRYPOINT ["abtest-exporter"]', 'ENTRYPOINT ["python"]'), "ENTRYPOINT"),
        (('CMD ["serve",', 'CMD ["status",'), "not serve"),
        (("VOLUME /data\n", ""), "no VOLUME"),
        (("COPY --from=builder /opt/venv /opt/venv", "COPY . /src"), "copies nothing"),
        (("    && mkdir /data", "    && apt-get install -y gcc && mkdir /data"), "installs gcc"),
        (("    && mkdir /data", "    && pip install . && mkdir /data"), "Python packages"),
    ],
)
def test_problems_are_found(text: str, change: tuple[str, str], complaint: str) -> None:
    old, new = change
    assert old in text
    found = problems(text.replace(old, new, 1))
    assert any(complaint in problem for problem in found), found


def test_a_single_stage_build_is_refused(text: str) -> None:
    single = text[text.index("FROM ${PYTHON_IMAGE}\n") :]
    assert problems("ARG PYTHON_IMAGE=python:3.11-slim\n" + single) == ["not a multi-stage build"]
