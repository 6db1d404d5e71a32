"""The package's shape: every subpackage says what it owns, module imports form no cycle,
and validating a config imports no CPU kernel module (the seam is `resnet_jax.backend`)."""

import ast
import pathlib
import subprocess
import sys

import resnet_jax

PACKAGE = pathlib.Path(resnet_jax.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The resnet_jax modules `path` imports at module level (not inside functions)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                name = f'{node.module}.{alias.name}'
                found.add(name if name in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in modules}


def test_every_subpackage_has_a_docstring():
    for init in PACKAGE.rglob('__init__.py'):
        assert ast.get_docstring(ast.parse(init.read_text())), f'{init} has no docstring'


def test_module_imports_have_no_cycle():
    paths = {_module_name(path): path for path in PACKAGE.rglob('*.py')}
    graph = {name: _imports(path, set(paths)) for name, path in paths.items()}
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 'open'
        for target in sorted(graph[name]):
            assert state.get(target) != 'open', ' -> '.join(path + [name, target])
            if target not in state:
                visit(target, path + [name])
        state[name] = 'done'

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_validating_a_config_imports_no_cpu_kernel_module():
    code = ('import sys; from resnet_jax import configs; '
            "configs.validate_config(configs.load_config('experiments/cifar10.py:resnet20')); "
            "print(sorted(m for m in sys.modules if m.startswith('resnet_jax.backend.cpu.')))")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            cwd=PACKAGE.parent, check=True)
    assert result.stdout.strip() == '[]'
