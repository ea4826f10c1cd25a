"""Build gpu_bundle/: what an offline GPU machine needs on top of its image, small enough to
travel with the repository (64 MiB in all).

The lent GPU machines run Python 3.12 with torch 2.11+cu130, nvcc and ninja, and have no
internet. They lack FlashInfer, its tvm-ffi runtime, and radixrt's serving dependencies
(pyzmq, fastapi, ...). This script downloads, from PyPI with pip, exactly the cp312
manylinux x86_64 wheels (or pure-Python ones) of those, at the versions installed here so
both machines run the same code, plus flashinfer-python packed as a tar.xz of its package
folder (the 62 MB wheel packs to ~17 MB), plus the default model's tokenizer files (tiny test
models and the benchmark borrow them; the default model's weights are too big to travel).

    python scripts/gpu_bundle.py build [--out gpu_bundle]   # what prepare_gpu_bundle.sh runs
    python scripts/gpu_bundle.py plan                       # list what would be bundled
    python scripts/gpu_bundle.py size                       # measure tree + bundle
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
FLASHINFER = "flashinfer-python==0.7.2.post1"
TVM_FFI = "apache-tvm-ffi"
TRAVEL_LIMIT_MIB = 64
DEFAULT_BUDGET_MIB = 56  # leaves room under the 64 MiB limit for the tree to grow
CACHE = Path(os.environ.get("RADIXRT_BUNDLE_CACHE", Path.home() / ".cache" / "radixrt-gpu-bundle"))

# What the GPU image already holds (KINDS.md of the lent machines, 2026-11-17), normalized.
GPU_IMAGE_PACKAGES = frozenset(canonicalize_name(n) for n in """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml
markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda
numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo
pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov
pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests
rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3
uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
# Bundled even though the image has them: pydantic needs a newer typing-extensions than the
# image may hold, and a newer one breaks nothing.
ALWAYS_BUNDLE = frozenset({"typing-extensions"})
# FlashInfer requirements its attention wrappers never import (FACTS.md: `import flashinfer`
# works without them); they are large or CUDA-version specific.
FLASHINFER_OPTIONAL = frozenset(canonicalize_name(n) for n in (
    "cuda-python", "cuda-tile", "nccl-extensions", "nccl4py", "nvidia-cudnn-frontend",
    "nvidia-cutlass-dsl"))

# Markers evaluated for the GPU machine, not this one.
TARGET_ENV = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux",
    "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix", "extra": "",
}
PIP_PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64",
                 "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_31_x86_64",
                 "manylinux_2_34_x86_64", "manylinux_2_35_x86_64", "manylinux1_x86_64"]
JIT_CACHE = "jit_cache.tar.xz"  # FlashInfer's compiled kernels for sm_90 (H100/H200)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "special_tokens_map.json")


def log(msg: str) -> None:
    print(f"[gpu_bundle] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ what to bundle


def applies(req: Requirement) -> bool:
    """True when a requirement is needed on the GPU machine (markers, no extras)."""
    return req.marker is None or req.marker.evaluate(TARGET_ENV)


def pyproject_dependencies(path: Path = REPO / "pyproject.toml") -> list[str]:
    import tomllib

    return list(tomllib.loads(path.read_text())["project"]["dependencies"])


def requirement_closure(roots: Iterable[str], requires: Callable[[str], list[str] | None],
                        present: frozenset[str] = GPU_IMAGE_PACKAGES,
                        always: frozenset[str] = ALWAYS_BUNDLE) -> list[str]:
    """Names to bundle: roots and their transitive requirements, minus what the image has.

    The image's own packages are trusted to bring their dependencies, so the walk stops
    there (except for `always`, which is bundled and walked).
    """
    out: list[str] = []
    seen: set[str] = set()
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop(0)
        name = canonicalize_name(req.name)
        if name in seen or not applies(req):
            continue
        seen.add(name)
        if name in present and name not in always:
            continue
        out.append(name)
        todo.extend(Requirement(r) for r in (requires(name) or []))
    return out


def metadata_requirement(metadata: str, name: str) -> Requirement:
    """The Requires-Dist entry for `name` in a wheel's METADATA text."""
    want = canonicalize_name(name)
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if canonicalize_name(req.name) == want and applies(req):
                return req
    raise LookupError(f"METADATA has no requirement on {name}")


def wheel_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return zf.read(member).decode()


def target_tags() -> list[Tag]:
    """Wheel tags the GPU machine's CPython 3.12 on x86_64 glibc Linux accepts, best first."""
    plats = [f"manylinux_2_{m}_x86_64" for m in range(39, 4, -1)]
    plats += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64",
              "linux_x86_64"]
    tags = list(cpython_tags((3, 12), abis=["cp312"], platforms=plats))
    tags += list(compatible_tags((3, 12), "cp312", platforms=plats))
    return tags


def select_wheels(filenames: Iterable[str], wanted: dict[str, SpecifierSet]) -> dict[str, str]:
    """For each wanted name, the newest matching version's best-tagged wheel for the target.

    Several versions or platforms may lie in a download cache; exactly one per name goes in
    the bundle (two versions of one package stop pip's whole install).
    """
    rank = {t: i for i, t in enumerate(target_tags())}
    best: dict[str, tuple[Version, int, str]] = {}
    for fn in filenames:
        if not fn.endswith(".whl"):
            continue
        name, version, _build, tags = parse_wheel_filename(fn)
        spec = wanted.get(name)
        if spec is None or not spec.contains(version, prereleases=True):
            continue
        score = min((rank[t] for t in tags if t in rank), default=None)
        if score is None:
            continue
        key = (version, -score, fn)
        if name not in best or key[:2] > best[name][:2]:
            best[name] = key
    missing = sorted(set(wanted) - set(best))
    if missing:
        raise LookupError(f"no cp312 x86_64 wheel for: {', '.join(missing)}")
    return {name: v[2] for name, v in best.items()}


def unmet_requirements(wheels: Iterable[Path],
                       present: frozenset[str] = GPU_IMAGE_PACKAGES) -> list[str]:
    """Requirements of the bundled wheels that neither the image nor the bundle satisfies."""
    wheels = list(wheels)
    have = set(present) | {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in wheels}
    gaps = []
    for w in wheels:
        for line in wheel_metadata(w).splitlines():
            if line.startswith("Requires-Dist:"):
                req = Requirement(line.split(":", 1)[1].strip())
                if applies(req) and canonicalize_name(req.name) not in have:
                    gaps.append(f"{w.name} requires {req}")
    return gaps


def local_pins(names: Iterable[str]) -> dict[str, SpecifierSet]:
    """name -> ==version installed here (CI and the GPU machine then run the same versions)."""
    return {n: SpecifierSet(f"=={md.version(n)}") for n in names}


def local_requires(name: str) -> list[str] | None:
    try:
        return md.requires(name)
    except md.PackageNotFoundError:
        return None


# ------------------------------------------------------------------ building


def pip_download(requirement: str, dest: Path, binary_target: bool = True) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
           "--disable-pip-version-check", "-d", str(dest), requirement]
    if binary_target:
        cmd += ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
        for plat in PIP_PLATFORMS:
            cmd += ["--platform", plat]
    log("pip download " + requirement)
    subprocess.run(cmd, check=True)


def pack_flashinfer(wheel: Path, out: Path) -> None:
    """tar.xz of the wheel's package folder and dist-info (unpacked there into site dir)."""
    with tempfile.TemporaryDirectory(prefix="fi-pack-") as tmp:
        with zipfile.ZipFile(wheel) as zf:
            members = [n for n in zf.namelist()
                       if n.startswith("flashinfer/") or re.match(r"flashinfer_python-.*\.dist-info/", n)]
            zf.extractall(tmp, members)
        log(f"packing {len(members)} files of {wheel.name} (xz, a few minutes on 2 cores)")
        partial = out.with_suffix(".partial")
        with open(partial, "wb") as fh:
            tar = subprocess.Popen(["tar", "-C", tmp, "-cf", "-", "."], stdout=subprocess.PIPE)
            subprocess.run(["xz", "-T0", "-6", "-c"], stdin=tar.stdout, stdout=fh, check=True)
            if tar.wait() != 0:
                raise RuntimeError("tar failed")
        partial.rename(out)


def tree_bytes(repo: Path = REPO) -> int:
    """Bytes of what travels besides the bundle: tracked plus untracked, not-ignored files."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-co", "--exclude-standard", "-z"],
                         check=True, capture_output=True).stdout.decode()
    total = 0
    for rel in filter(None, out.split("\0")):
        p = repo / rel
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def ensure_ignored(repo: Path, paths: Iterable[str]) -> None:
    """gpu_bundle/ and the JIT cache must not be committed: ignore them locally if needed."""
    exclude = repo / ".git" / "info" / "exclude"
    for rel in paths:
        probe = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", rel + "/x"])
        if probe.returncode != 0 and exclude.parent.is_dir():
            with open(exclude, "a") as fh:
                fh.write(f"/{rel}/\n")
            log(f"added /{rel}/ to .git/info/exclude (add it to .gitignore)")


def bundle_plan() -> dict[str, list[str]]:
    serving = requirement_closure(pyproject_dependencies(), local_requires)
    return {"serving": serving, "flashinfer": [FLASHINFER, TVM_FFI]}


def build(out: Path, budget_mib: float) -> dict:
    ensure_ignored(REPO, ["gpu_bundle", ".gpu_cache"])
    CACHE.mkdir(parents=True, exist_ok=True)
    dl = CACHE / "wheels"
    dl.mkdir(exist_ok=True)
    # 1. FlashInfer itself (pure Python, JIT kernels): the wheel once, packed once.
    fi_name = FLASHINFER.replace("-", "_").replace("==", "-")
    fi_wheel = next(iter(sorted(dl.glob(f"{fi_name}-*.whl"))), None)
    if fi_wheel is None:
        pip_download(FLASHINFER, dl, binary_target=False)
        fi_wheel = next(iter(sorted(dl.glob(f"{fi_name}-*.whl"))))
    fi_tar = CACHE / f"{fi_name}.tar.xz"
    if not fi_tar.is_file():
        pack_flashinfer(fi_wheel, fi_tar)
    # 2. Its compiled runtime, at the newest version its metadata admits, for cp312.
    fi_meta = wheel_metadata(fi_wheel)
    tvm_req = metadata_requirement(fi_meta, TVM_FFI)
    fi_missing = [n for n in requirement_closure([str(tvm_req)], lambda _n: None)]
    others = [canonicalize_name(Requirement(line.split(":", 1)[1]).name)
              for line in fi_meta.splitlines() if line.startswith("Requires-Dist:")
              and applies(Requirement(line.split(":", 1)[1].strip()))]
    unexpected = sorted(set(others) - GPU_IMAGE_PACKAGES - FLASHINFER_OPTIONAL - {TVM_FFI})
    if unexpected:
        log(f"warning: flashinfer also requires {unexpected}, not on the GPU image")
    pip_download(str(tvm_req), dl)
    # 3. radixrt's serving dependencies the image lacks, pinned to the versions here.
    serving = requirement_closure(pyproject_dependencies(), local_requires)
    for name, spec in local_pins(serving).items():
        pip_download(f"{name}{spec}", dl)
    wanted = {**local_pins(serving), TVM_FFI: tvm_req.specifier}
    chosen = select_wheels(os.listdir(dl), wanted)
    for gap in unmet_requirements([dl / fn for fn in chosen.values()]):
        log(f"warning: {gap}")
    # 4. Assemble. A JIT cache that a GPU run brought back (gpu_check.sh's jit_cache.tar.xz,
    # copied into gpu_bundle/) survives rebuilds: it saves ~1 minute of nvcc per GPU run.
    jit = CACHE / JIT_CACHE
    if (out / JIT_CACHE).is_file():
        shutil.copy2(out / JIT_CACHE, jit)
    if out.exists():
        shutil.rmtree(out)
    (out / "wheels").mkdir(parents=True)
    for fn in sorted(chosen.values()):
        shutil.copy2(dl / fn, out / "wheels" / fn)
    shutil.copy2(fi_tar, out / "flashinfer.tar.xz")
    if jit.is_file():
        shutil.copy2(jit, out / JIT_CACHE)
    tok_dir = out / "tokenizer"
    tok_dir.mkdir()
    sys.path.insert(0, str(REPO))
    from radixrt.default_model import default_model_dir

    src = default_model_dir()
    copied = [f for f in TOKENIZER_FILES if (src / f).is_file()]
    for f in copied:
        shutil.copy2(src / f, tok_dir / f)
    manifest = {
        "flashinfer": fi_wheel.name, "flashinfer_tar": "flashinfer.tar.xz",
        "wheels": sorted(chosen.values()), "tokenizer": copied,
        "bundled_for_flashinfer": fi_missing, "serving": serving,
        "jit_cache": (out / JIT_CACHE).is_file(),
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    report_size(out, budget_mib)
    return manifest


def report_size(out: Path, budget_mib: float) -> int:
    bundle = dir_bytes(out) if out.exists() else 0
    tree = tree_bytes()
    total = bundle + tree
    mib = 2**20
    print(f"gpu_bundle: {bundle / mib:.1f} MiB  repo tree: {tree / mib:.1f} MiB  "
          f"total that travels: {total / mib:.1f} MiB (limit {TRAVEL_LIMIT_MIB} MiB, "
          f"budget {budget_mib:g} MiB)")
    if total > budget_mib * mib:
        raise SystemExit(f"too big: {total / mib:.1f} MiB > {budget_mib:g} MiB")
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["build", "plan", "size"])
    ap.add_argument("--out", type=Path, default=REPO / "gpu_bundle")
    ap.add_argument("--budget-mib", type=float, default=DEFAULT_BUDGET_MIB)
    args = ap.parse_args(argv)
    if args.command == "plan":
        print(json.dumps(bundle_plan(), indent=2))
    elif args.command == "size":
        report_size(args.out, args.budget_mib)
    else:
        build(args.out, args.budget_mib)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
