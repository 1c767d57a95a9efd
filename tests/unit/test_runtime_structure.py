"""The runtime's shape (issue 19): one OMS digest implementation, no import cycle between its modules, and no module
long enough to hold several jobs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

RUNTIME = Path(__file__).resolve().parents[2] / "runtime" / "llmos_runtime"
MAX_LINES = 500


def _local_imports(path: Path) -> set[str]:
    """Modules of llmos_runtime that ``path`` imports (at module level or inside functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llmos_runtime."):
            out.add(node.module.split(".")[1])
    return out


def test_no_import_cycle_between_runtime_modules():
    graph = {p.stem: _local_imports(p) for p in RUNTIME.glob("*.py")}
    # depth-first search for a back edge
    state: dict[str, int] = {}

    def visit(mod: str, trail: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(graph.get(mod, ())):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail, mod, dep]))
            if dep in graph and not state.get(dep):
                visit(dep, [*trail, mod])
        state[mod] = 2

    for mod in sorted(graph):
        if not state.get(mod):
            visit(mod, [])


def test_fetch_hashes_with_llmos_signing_not_its_own_hasher():
    tree = ast.parse((RUNTIME / "fetch.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"hashlib", "blake3"}, "fetch.py must use llmos_signing.hashing"
    assert "sources" not in _local_imports(RUNTIME / "fetch.py")


@pytest.mark.parametrize("path", sorted(RUNTIME.glob("*.py")), ids=lambda p: p.name)
def test_no_runtime_module_over_500_lines(path: Path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_stream_hash_gives_the_digests_of_a_file_on_disk(tmp_path):
    """The one-pass fetch and the verification of files on disk compute the same digests (one implementation)."""
    from llmos_signing.hashing import HashTask, StreamHash, hash_tasks, shard_bounds

    data = bytes(range(256)) * 41  # 10496 bytes: several shards and a short last one
    f = tmp_path / "w.bin"
    f.write_bytes(data)
    for hash_type in ("sha256", "blake2b", "blake3"):
        for shard in (None, 1000):
            sh = StreamHash(hash_type, shard)
            for i in range(0, len(data), 777):  # odd write sizes across shard edges
                sh.update(data[i:i + 777])
            got = sh.finish()
            bounds = [(0, len(data))] if shard is None else shard_bounds(len(data), shard)
            tasks = [HashTask(f"{s}", str(f), "w.bin", s, e, len(data)) for s, e in bounds]
            on_disk = hash_tasks(tasks, hash_type, threads=1)
            assert [(s, e) for s, e, _ in got] == bounds
            assert [d for _, _, d in got] == [on_disk[f"{s}"] for s, _ in bounds]
