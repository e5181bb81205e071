"""The Singularity/Apptainer image holds every module the commands of main.py import."""
import ast
import re

from tests.test_main import REPO


def image_files(definition):
    """{repository path: path in the image} of the %files section, read as Apptainer reads it: a
    line is a source and an optional destination (its first two words; '#' starts a comment)."""
    section = re.search(r'^%files\n(.*?)(?=^%)', definition, re.M | re.S).group(1)
    copied = {}
    for line in section.splitlines():
        words = line.split()
        if words and not words[0].startswith('#'):
            copied[words[0]] = words[1] if len(words) > 1 else words[0]
    return copied


def repository_modules(start):
    """The repository's .py files that `start` imports, at any depth and from any function (main.py
    imports most of its commands' modules inside them)."""
    found, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path in found:
            continue
        found.add(path)
        for node in ast.walk(ast.parse((REPO / path).read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f'{node.module}.{alias.name}' for alias in node.names]
            for name in names:
                parts = name.split('.')
                for depth in range(1, len(parts) + 1):  # a package's __init__ runs first
                    base = '/'.join(parts[:depth])
                    todo += [f for f in (f'{base}.py', f'{base}/__init__.py') if (REPO / f).is_file()]
    return found


def test_the_image_holds_every_module_the_commands_import():
    definition = (REPO / 'dadh-singularity.def').read_text()
    copied = image_files(definition)
    assert re.search(r'PYTHONPATH=/opt/dadh\b', definition)
    assert re.search(r'exec python /opt/dadh/main\.py', definition)
    modules = repository_modules('main.py')
    assert {'runs.py', 'retrieval/api.py', 'retrieval/index.py', 'datasets/prepare.py'} <= modules
    missing = []
    for module in sorted(modules):
        sources = [s for s in copied if module == s or module.startswith(s.rstrip('/') + '/')]
        at = [copied[s].rstrip('/') + module[len(s.rstrip('/')):] for s in sources]
        if f'/opt/dadh/{module}' not in at:
            missing.append(module)
    assert missing == [], f'not at /opt/dadh/ in the image: {missing}'
