"""The package's shape (issue 11): no import circle between its modules, counting imports inside functions too;
no function in train.py over 80 lines; samplers, loaders and dataset classes only in data.py."""
import ast
from pathlib import Path
import pytest

PKG = Path(__file__).resolve().parents[1] / 'scrfd_nb'
MODULES = sorted(p.stem for p in PKG.glob('*.py') if p.stem not in ('__init__', '_modidx'))


def imports_of(name: str) -> set[str]:
    "The scrfd_nb modules `name` imports anywhere in its source (top level, functions, `if __name__` blocks)."
    out = set()
    for node in ast.walk(ast.parse((PKG / f'{name}.py').read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1: base = mod
            elif mod == 'scrfd_nb': base = ''
            elif mod.startswith('scrfd_nb.'): base = mod.removeprefix('scrfd_nb.')
            else: continue
            if base: out.add(base.split('.')[0])
            else: out |= {a.name for a in node.names}          # from . import x / from scrfd_nb import x
        elif isinstance(node, ast.Import):
            out |= {a.name.split('.')[1] for a in node.names if a.name.startswith('scrfd_nb.')}
    return {m for m in out if m in MODULES and m != name}


def find_cycle(graph: dict) -> list | None:
    "One import circle as a list of modules (first == last), or None."
    state, stack = {}, []
    def visit(u):
        state[u] = 1; stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1: return stack[stack.index(v):] + [v]
            if v not in state and (c := visit(v)): return c
        state[u] = 2; stack.pop()
    for m in graph:
        if m not in state and (c := visit(m)): return c


def test_cycle_finder_finds_one():
    "The checker itself: a planted circle is found, a chain is not."
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) is None


def test_no_import_circle():
    graph = {m: imports_of(m) for m in MODULES}
    assert graph['train'] >= {'data', 'losses', 'model'}, graph['train']   # the parser sees real imports
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


def test_model_imports_only_the_network():
    "model.py is the network and its weights: it builds on config/backbones/neck/head/core and nothing later."
    assert imports_of('model') <= {'config', 'backbones', 'neck', 'head', 'core'}, imports_of('model')


def test_train_functions_short():
    tree = ast.parse((PKG / 'train.py').read_text())
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80]
    assert not long, f'functions over 80 lines in train.py: {long}'


def test_data_classes_live_in_data():
    "Sampler, DataLoader and Dataset subclasses are defined in data.py only (an Optuna sampler draws networks, not data)."
    bases = {'Sampler', 'DataLoader', 'Dataset', 'IterableDataset', 'DistributedSampler', 'BatchSampler'}
    where = []
    for m in MODULES:
        for n in ast.walk(ast.parse((PKG / f'{m}.py').read_text())):
            if isinstance(n, ast.ClassDef):
                names = {b.attr if isinstance(b, ast.Attribute) else getattr(b, 'id', '') for b in n.bases}
                if 'BaseSampler' in names: continue   # optuna.samplers.BaseSampler: the search's candidate draws
                if names & bases or n.name.endswith(('Sampler', 'Loader')): where.append((m, n.name))
    assert where and all(m == 'data' for m, _ in where), where
