"""A suite: one spec that names several studies (`studies:`), run by one command into one folder.

`<out>/<sub-study name>/` is a normal study folder for each (resumable, `study status`, its own report), and
`<out>/report.{html,md}` has one section per sub-study. `--set studies.<name>.<spec key>=VALUE` edits one
sub-study, `--set studies.*.<spec key>=VALUE` every one. See docs/studies.md, "Suites".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cnnlab import config as cfg
from cnnlab import safeio
from cnnlab.errors import CnnlabError, ConfigError, close_matches
from cnnlab.runfolder import SUITE_FILE
from cnnlab.study.spec import SAFE_NAME, apply_overrides, parse_study_spec, spec_relative

SUITE_KEYS = ("name", "description", "studies")
SUITE_SPEC_FILE = "suite.yaml"
INLINE_DIR = "suite-specs"  # inline sub-study specs are written here so worker processes can read them
ALL = "*"


@dataclasses.dataclass(frozen=True)
class SubStudy:
    """One study of a suite: its spec file (the suite's inline specs are written out) and its overrides."""

    name: str
    spec_path: Path
    overrides: tuple[str, ...]
    inline: Mapping[str, Any] | None = None  # the inline spec, written to spec_path before it runs


@dataclasses.dataclass(frozen=True)
class SuiteSpec:
    """A validated suite spec: a name and its sub-studies, in the order they run."""

    name: str
    path: Path
    studies: tuple[SubStudy, ...]
    raw: Mapping[str, Any]


def is_suite(path: str | Path) -> bool:
    """Does the spec file hold a suite (a top-level `studies:` list)?"""
    raw = cfg.load_yaml(path, "study spec")
    return "studies" in raw


def load_suite(path: str | Path, out_dir: str | Path, overrides: Sequence[str] = ()) -> SuiteSpec:
    """Read and validate a suite spec; `--set` overrides are routed to the sub-studies they name."""
    path = Path(path)
    raw = cfg.load_yaml(path, "suite spec")
    for key in raw:
        if key not in SUITE_KEYS:
            raise ConfigError(
                f"unknown suite spec key {key!r}{close_matches(str(key), SUITE_KEYS)}; allowed: "
                f"{', '.join(SUITE_KEYS)} (a suite's studies hold their own base, grid, seeds, ...)"
            )
    items = raw.get("studies")
    if not isinstance(items, list) or not items:
        raise ConfigError(
            "suite spec key 'studies' must be a non-empty list of spec files (relative to the suite) "
            "or inline specs with a name"
        )
    named = [_sub_study(item, i, path, Path(out_dir)) for i, item in enumerate(items)]
    names = [name for name, _, _ in named]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(
            f"suite spec studies: the name(s) {', '.join(twice)} are used twice; give each a name"
        )
    routed = _route(overrides, names)
    studies = tuple(
        SubStudy(name, spec_path, tuple(routed[name]), inline) for name, spec_path, inline in named
    )
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise ConfigError(f"suite spec key 'name' must be a folder-safe name, got {cfg.short(name)}")
    return SuiteSpec(name=name, path=path, studies=studies, raw=raw)


def _sub_study(item: Any, index: int, suite_path: Path, out_dir: Path) -> tuple[str, Path, Any]:
    """(name, spec file, inline spec or None) of `studies[index]`."""
    where = f"suite spec studies[{index}]"
    if isinstance(item, str):
        spec_path = spec_relative(item, suite_path.parent)
        raw = cfg.load_yaml(spec_path, f"study spec of {where}")
        if "studies" in raw:
            raise ConfigError(f"{where}: {item} is a suite itself; a suite lists studies, not suites")
        return _checked_name(raw.get("name", spec_path.stem), where), spec_path, None
    if not isinstance(item, Mapping):
        raise ConfigError(
            f"{where} must be a spec file path or an inline spec mapping, got {cfg.short(item)}"
        )
    if "name" not in item:
        raise ConfigError(f"{where}: an inline study needs a 'name' (its folder under the suite's folder)")
    name = _checked_name(item["name"], where)
    inline = dict(item)
    base = inline.get("base")
    if isinstance(base, str):  # a run YAML file, relative to the suite
        inline["base"] = str(spec_relative(base, suite_path.parent).absolute())
    return name, out_dir.absolute() / INLINE_DIR / f"{name}.yaml", inline


def _checked_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: the study name must be folder-safe (letters, digits, '.', '_', '+', '-'), "
            f"got {cfg.short(name)}"
        )
    return name


def _route(overrides: Sequence[str], names: Sequence[str]) -> dict[str, list[str]]:
    """`studies.<name>.<key>=v` → `<key>=v` for that study; `studies.*.<key>=v` for every study."""
    routed: dict[str, list[str]] = {name: [] for name in names}
    for text in overrides:
        key, sep, value = text.partition("=")
        head, _, rest = key.strip().partition(".")
        target, _, spec_key = rest.partition(".")
        if head != "studies" or not sep or not spec_key:
            raise ConfigError(
                f"--set {text}: a suite's overrides name their study: studies.<name>.<spec key>=VALUE "
                f"(or studies.*.<spec key>=VALUE for every study); studies: {', '.join(names)}"
            )
        if target != ALL and target not in routed:
            raise ConfigError(
                f"--set {text}: the suite has no study {target!r}{close_matches(target, names)}; "
                f"studies: {', '.join(names)} (or * for every one)"
            )
        for name in names if target == ALL else [target]:
            routed[name].append(f"{spec_key}={value}")
    return routed


def write_inline_specs(suite: SuiteSpec) -> None:
    """Write each inline sub-study spec to its file (worker processes and `study.json` name it)."""
    for study in suite.studies:
        if study.inline is not None:
            study.spec_path.parent.mkdir(parents=True, exist_ok=True)
            text = f"# inline study {study.name!r} of suite {suite.path}\n"
            safeio.atomic_write_text(
                study.spec_path, text + yaml.safe_dump(dict(study.inline), sort_keys=False)
            )


def write_suite_file(suite: SuiteSpec, out_dir: Path, overrides: Sequence[str]) -> None:
    """suite.yaml (the spec, with the overrides named) and suite.json (the sub-study folders, in order)."""
    header = f"# {suite.path} with " + " ".join(f"--set {item}" for item in overrides) + "\n"
    text = suite.path.read_text() if not overrides else header + suite.path.read_text()
    safeio.atomic_write_text(out_dir / SUITE_SPEC_FILE, text)
    safeio.atomic_write_json(
        out_dir / SUITE_FILE,
        {
            "name": suite.name,
            "spec_path": str(suite.path.absolute()),
            "studies": [{"name": s.name, "spec_path": str(s.spec_path)} for s in suite.studies],
        },
    )


@dataclasses.dataclass(frozen=True)
class SuiteOutcome:
    """What one `study run` of a suite did: each sub-study's outcome, in order."""

    out_dir: Path
    outcomes: tuple[tuple[str, Any], ...]  # (name, StudyOutcome)

    @property
    def unfinished(self) -> int:
        """Runs of every sub-study that failed or diverged."""
        return sum(o.counts["failed"] + o.counts["diverged"] for _, o in self.outcomes)


def check_suite(suite: SuiteSpec, out_dir: Path) -> list[tuple[SubStudy, Any]]:
    """Plan and check every sub-study before any of them trains; errors name the sub-study. Returns each
    sub-study with its plan (a `StudyPlan`)."""
    # these load Lightning; `cnnlab report` imports suite
    from cnnlab.study.checks import check_data, check_plan
    from cnnlab.study.plan import expand

    plans = []
    for study in suite.studies:
        source = study.inline if study.inline is not None else cfg.load_yaml(study.spec_path, "study spec")
        base_dir = suite.path.parent if study.inline is not None else study.spec_path.parent
        try:
            spec = parse_study_spec(
                apply_overrides(source, study.overrides), default_name=study.name, base_dir=base_dir
            )
            plan = expand(spec, out_dir / study.name)
            check_plan(plan)
            check_data(plan)
        except CnnlabError as error:
            raise ConfigError(f"suite {suite.name!r}, study {study.name!r}: {error}") from None
        plans.append((study, plan))
    return plans


def run_suite(
    spec_path: str | Path,
    out_dir: str | Path,
    *,
    overrides: Sequence[str] = (),
    worker_only: bool = False,
    **study_options: Any,
) -> SuiteOutcome:
    """Run (or continue) every sub-study of a suite, in order, each into `<out_dir>/<name>/`.

    Every sub-study is planned and checked first, and so is the folder (a suite of this spec, or a new or
    empty one) and each sub-study's folder, so a bad spec, a missing weights file or a refused folder stops
    the suite before anything is written or trains. `study_options` are `run_study`'s (workers, options,
    restart, log)."""
    from cnnlab.study.runner import run_study  # Lightning: see check_suite

    out = Path(out_dir).absolute()
    suite = load_suite(spec_path, out, overrides)
    plans = check_suite(suite, out)
    restart = bool(study_options.get("restart")) and not worker_only
    storage = getattr(study_options.get("options"), "storage", None)
    check_suite_folder(suite, out, plans, storage, restart=restart)
    if not worker_only:
        claim_suite_folder(
            suite, out, plans, storage, overrides, restart=restart, log=study_options.get("log", print)
        )
    outcomes = []
    for study in suite.studies:
        outcome = run_study(
            study.spec_path,
            out / study.name,
            overrides=study.overrides,
            worker_only=worker_only,
            **study_options,
        )
        outcomes.append((study.name, outcome))
    return SuiteOutcome(out, tuple(outcomes))


def check_suite_folder(
    suite: SuiteSpec, out: Path, plans: Sequence[tuple[SubStudy, Any]], storage: str | None, *, restart: bool
) -> bool:
    """Everything a suite checks before writing: its folder holds no other kind's files and no foreign
    files, records no other suite (unless `restart`: then True, that suite is to be discarded), and each
    sub-study's folder would be accepted by `study run` (nothing is changed here)."""
    from cnnlab.study.checks import SUITE_FOLDER, check_out_folder
    from cnnlab.study.runner import check_study_out

    names = [study.name for study in suite.studies]
    recorded = _recorded_suite(out)
    check_out_folder(out, SUITE_FOLDER, also_own={*names, *_recorded_studies(recorded)})
    other_suite = _check_same_suite(suite, out, recorded, restart=restart)
    for study, plan in plans:
        check_study_out(plan, study.spec_path, storage, restart=restart)
    return other_suite


def claim_suite_folder(
    suite: SuiteSpec,
    out: Path,
    plans: Sequence[tuple[SubStudy, Any]],
    storage: str | None,
    overrides: Sequence[str],
    *,
    restart: bool,
    log: Any = print,
) -> None:
    """Under the folder's lock: check again (another suite may have taken the folder meanwhile), discard
    another suite when `restart`, then write suite.yaml, suite.json and the inline sub-study specs."""
    from cnnlab.study.checks import folder_lock

    with folder_lock(out, log=log):
        if check_suite_folder(suite, out, plans, storage, restart=restart):
            discard_suite(out, keep={study.name for study in suite.studies})
        write_suite_file(suite, out, overrides)
        write_inline_specs(suite)


def _recorded_studies(recorded: dict[str, Any] | None) -> list[str]:
    """The sub-study names a folder's suite.json records ([] without one, or when it is unreadable)."""
    studies = recorded.get("studies") if recorded else None
    if not isinstance(studies, list):
        return []
    return [str(item["name"]) for item in studies if isinstance(item, Mapping) and "name" in item]


def _recorded_suite(out: Path) -> dict[str, Any] | None:
    """The folder's suite.json: None without one, {} when it is unreadable or not a mapping."""
    path = out / SUITE_FILE
    if not path.is_file():
        return None
    try:
        recorded = safeio.read_json(path)
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _check_same_suite(suite: SuiteSpec, out: Path, recorded: dict[str, Any] | None, *, restart: bool) -> bool:
    """Refuse a folder whose suite.json (`recorded`) records another suite (another name or other
    sub-studies), unless `restart` (then True)."""
    from cnnlab.study.checks import StudyFolderError

    if recorded is None:
        return False
    theirs = (recorded.get("name"), _recorded_studies(recorded))
    mine = (suite.name, [study.name for study in suite.studies])
    if theirs == mine:
        return False
    if restart:
        return True
    source = recorded.get("spec_path") or "an unknown spec"
    raise StudyFolderError(
        f"suite folder {str(out)!r} holds suite {theirs[0]!r} from {source} "
        f"(studies {', '.join(theirs[1]) or 'unknown'}); refusing suite {suite.name!r} from {suite.path} "
        f"(studies {', '.join(mine[1])}): a folder holds one spec; use another --out, or --restart to "
        "discard that suite's studies that this one does not have and start over"
    )


def discard_suite(out: Path, *, keep: set[str]) -> None:
    """Remove what a suite wrote into its folder: its own files, and the sub-studies the new suite does not
    have (as `study run --restart` would); files cnnlab did not write stay."""
    from cnnlab.study.checks import SUITE_FOLDER, remove_own_files
    from cnnlab.study.runner import discard_study

    for name in _recorded_studies(_recorded_suite(out)):
        folder = out / name
        if name not in keep and SAFE_NAME.fullmatch(name) and folder.is_dir():
            discard_study(folder)
            _remove_if_empty(folder)
    remove_own_files(out, SUITE_FOLDER)


def _remove_if_empty(folder: Path) -> None:
    from cnnlab.study.checks import FOLDER_LOCK

    (folder / FOLDER_LOCK).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
