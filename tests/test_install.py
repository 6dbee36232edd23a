"""The environment installs the same way a year from now: the lock file matches pyproject.toml, and every optional
path the stages take imports in the installed environment (a missing install step fails here, not on a user's run).
"""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from stages.core.environment import LOCK_FILE, canonical, locked

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = ROOT / LOCK_FILE


def _requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]


@pytest.mark.parametrize("req", _requirements(), ids=str)
def test_every_dependency_is_locked_within_its_range(req: Requirement) -> None:
    pins = locked(LOCK)
    name = canonical(req.name)
    assert name in pins, f"{req} is not in {LOCK_FILE}: run `make lock`"
    version = pins[name].split("+")[0]  # torch's local label (+cpu) is the wheel's build, not its version
    assert req.specifier.contains(version, prereleases=True), (
        f"{LOCK_FILE} pins {name}=={pins[name]}, outside pyproject.toml's {req}: run `make lock`"
    )


def test_every_pin_has_a_hash_and_only_pins() -> None:
    text = LOCK.read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", "\n".join(line for line in text.splitlines() if not line.startswith("#")))
    entries = [e.strip() for e in entries if e.strip()]
    assert len(entries) == len(locked(LOCK)) > 100
    for entry in entries:
        assert re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*==\S+", entry), entry[:80]
        assert "--hash=sha256:" in entry, f"{entry.splitlines()[0]}: no hash (make lock writes one per file)"


def test_torch_is_installed_first_at_the_locked_version() -> None:
    makefile = (ROOT / "Makefile").read_text()
    first = re.search(r"pip install -q torch==(\S+)", makefile)
    assert first, "the Makefile installs torch (its CPU wheel) before the lock"
    assert makefile.index(first.group(0)) < makefile.index("--require-hashes")
    assert locked(LOCK)["torch"].split("+")[0] == first.group(1)
    assert f"torch=={first.group(1)}" in PYPROJECT["project"]["dependencies"]


def test_the_installed_environment_is_the_locked_one() -> None:
    """What pip installed is what the lock says (CI installs from scratch, so this is the lock install's check)."""
    from stages.core.environment import installed, off_lock

    assert off_lock(installed(), locked(LOCK)) == {}


# every optional path of the stages: the module each imports only when a param or a source asks for it
OPTIONAL = {
    "web pages (trafilatura, lxml's html cleaner)": ("trafilatura", "lxml.html.clean", "lxml_html_clean"),
    "hf:// sources and models (datasets, huggingface_hub)": ("datasets", "huggingface_hub"),
    "the Ray executor": ("ray",),
    "ANN search (faiss)": ("faiss",),
    "QLoRA (bitsandbytes, peft, trl)": ("bitsandbytes", "peft", "trl"),
    "harness tasks (lm-eval)": ("lm_eval", "lm_eval.tasks"),
    "generation metrics": ("rouge_score", "sacrebleu", "bert_score"),
    "GGUF models": ("gguf",),
    "moderation": ("profanity_check", "py3langid", "phonenumbers", "tldextract", "ftfy", "cleanlab"),
}


@pytest.mark.parametrize("path", sorted(OPTIONAL))
def test_every_optional_path_imports(path: str) -> None:
    for module in OPTIONAL[path]:
        importlib.import_module(module)
