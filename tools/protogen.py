"""Generate (or check) the Python code for the edgefleet wire contract.

Generated modules are committed next to their ``.proto`` files (``protos/edgefleet/v1/*_pb2*.py`` and
``.pyi`` stubs from mypy-protobuf), so installing edgefleet needs no protoc. ``make proto`` regenerates;
``make test`` runs ``--check``, which regenerates into a temporary directory and fails when the committed
files differ, so a .proto edit without regeneration cannot land.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent / "protos"
PACKAGE_DIR = PROTO_ROOT / "edgefleet" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files() -> list[Path]:
    return sorted(PACKAGE_DIR.glob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Run protoc (grpcio-tools) with the mypy-protobuf plugins; return the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    plugin_dir = Path(sys.executable).parent
    wkt_include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{wkt_include}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}; see the messages above")
    return sorted(p for p in (out_root / "edgefleet" / "v1").iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def check() -> list[str]:
    """Return a list of problems: generated files that are missing, stale or extra."""
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-protogen-") as tmp:
        fresh = {p.name: p for p in generate(Path(tmp))}
        committed = {p.name: p for p in PACKAGE_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}
        for name, path in fresh.items():
            if name not in committed:
                problems.append(f"missing generated file protos/edgefleet/v1/{name}")
            elif not filecmp.cmp(path, committed[name], shallow=False):
                problems.append(f"stale generated file protos/edgefleet/v1/{name}")
        problems.extend(f"extra generated file protos/edgefleet/v1/{n}" for n in committed if n not in fresh)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when committed code is stale")
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="output root (default: protos/)")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print("run `make proto` and commit the result", file=sys.stderr)
            return 1
        print(f"generated code is up to date ({len(proto_files())} .proto files)")
        return 0
    with tempfile.TemporaryDirectory(prefix="edgefleet-protogen-") as tmp:
        files = generate(Path(tmp))
        target = args.out / "edgefleet" / "v1"
        for old in target.iterdir():
            if old.name.endswith(GENERATED_SUFFIXES):
                old.unlink()
        for f in files:
            shutil.copyfile(f, target / f.name)
    print(f"generated {len(files)} files into {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
