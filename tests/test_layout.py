"""The layout is the architecture: each folder of ``pipeline/`` is one layer and may import
only the layers below it (``docs/design.md``). Checked on every import statement, including
the ones inside functions, from the source as text."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# layer -> the layers (and third-party packages) it may import
LAYERS = {
    "foundation": {"foundation"},
    "engine": {"engine"},
    "inputs": {"foundation", "engine", "inputs"},
    "store": {"foundation", "engine", "store"},
    "stages": {"foundation", "engine", "inputs", "store", "stages"},
}
# the engine runs on a GPU node with torch and numpy alone (bench/gpu.py); tqdm is imported
# inside the functions that draw a bar, only when asked for one (progress=True)
ENGINE_THIRD_PARTY = {"torch", "numpy", "tqdm"}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "pipeline" or len(parts) == 1:
        return None
    if parts[1] in ("config", "atomic", "__version__"):
        return "foundation"
    return parts[1]


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names = [f"{target}.{a.name}" for a in node.names] if target == "pipeline" else [target]
            out += [(node.lineno, n) for n in names]
    return out


def sources(where: str):
    return sorted((ROOT / where).rglob("*.py"))


MODULES = [p for p in sources("pipeline") if p.name != "__init__.py" or p.parent.name != "pipeline"]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_layer_imports_only_the_layers_below(path):
    own = layer_of(module_name(path)) or "foundation"
    bad = []
    for line, target in imports(path):
        if target.split(".")[0] in ("jobs", "analysis", "bench", "tests"):
            bad.append(f"line {line}: {target} (pipeline/ never imports the commands or the analysis)")
        other = layer_of(target)
        if other is not None and other not in LAYERS[own]:
            bad.append(f"line {line}: {target} (layer {other!r}; {own!r} may import {sorted(LAYERS[own])})")
    assert not bad, f"{path.relative_to(ROOT)} ({own}) crosses the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", sources("pipeline/engine"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_engine_needs_only_torch_and_numpy(path):
    import sys

    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    third = {t.split(".")[0] for _, t in imports(path)} - stdlib - {"pipeline"}
    assert third <= ENGINE_THIRD_PARTY, f"{path.relative_to(ROOT)} imports {sorted(third - ENGINE_THIRD_PARTY)}"


def test_every_module_sits_in_a_layer():
    flat = [p.name for p in (ROOT / "pipeline").glob("*.py") if p.name != "__init__.py"]
    assert sorted(flat) == ["atomic.py", "config.py"], (
        f"pipeline/ holds only the foundation (config, atomic) at its top; move {flat} into a layer")


def test_the_public_api_resolves_and_stays_small():
    import pipeline

    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None, name
    assert len(pipeline.__all__) <= 20
    with pytest.raises(AttributeError, match="public names"):
        pipeline.no_such_thing


def test_the_checker_sees_a_crossing(tmp_path):
    """Not vacuous: an engine module importing the store is found, in a function too."""
    bad = tmp_path / "pipeline" / "engine" / "x.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("def f():\n    from pipeline.store.lines import open_store\n    from ..inputs import data\n")
    got = [t for _, t in imports(bad, root=tmp_path)]
    assert got == ["pipeline.store.lines", "pipeline.inputs"]
    assert {layer_of(t) for t in got} == {"store", "inputs"}

