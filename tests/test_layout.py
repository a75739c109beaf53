"""The module layout of the design: no import cycles, and the math imports no runner, model or dataset."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'score_sde'


def module_name(path):
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def import_graph():
  """module -> the score_sde modules it imports anywhere in its body (lazy imports count)."""
  modules = {module_name(p): p for p in PACKAGE.rglob('*.py')}
  graph = {}
  for name, path in modules.items():
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        targets.add(node.module)
        targets.update(f'{node.module}.{a.name}' for a in node.names)
    graph[name] = {t for t in targets if t in modules and t != name and not name.startswith(t + '.')}
  return graph


def find_cycle(graph):
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for target in sorted(graph[node]):
      if state.get(target) == 'open':
        return stack[stack.index(target):] + [target]
      if target not in state:
        found = visit(target)
        if found:
          return found
    state[node] = 'done'
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_the_graph_sees_imports():
  graph = import_graph()
  assert 'score_sde.runner.train' in graph['score_sde.runner.modes']
  assert find_cycle({'a': {'b'}, 'b': {'a'}}) == ['a', 'b', 'a']


def test_no_import_cycle():
  assert find_cycle(import_graph()) is None


def test_evaluate_does_not_import_the_training_loop():
  assert 'score_sde.runner.train' not in import_graph()['score_sde.runner.evaluate']


MATH = ('score_sde.sde_lib', 'score_sde.sampling', 'score_sde.likelihood', 'score_sde.losses', 'score_sde.controllable',
        'score_sde.toy', 'score_sde.datasets', 'score_sde.models')
LEAVES = ('score_sde.config_table', 'score_sde.parallel', 'score_sde.registry', 'score_sde.atomic_files')


def _in(name, packages):
  return any(name == p or name.startswith(p + '.') for p in packages)


def test_the_math_and_models_import_no_runner_or_metrics():
  graph = import_graph()
  for name in graph:
    if _in(name, MATH):
      bad = {t for t in graph[name] if _in(t, ('score_sde.runner', 'score_sde.metrics'))}
      assert not bad, (name, bad)


def test_metrics_import_no_runner():
  graph = import_graph()
  for name in graph:
    if _in(name, ('score_sde.metrics',)):
      assert not {t for t in graph[name] if _in(t, ('score_sde.runner',))}, name


def test_samplers_and_likelihood_import_no_model_or_dataset_and_models_no_dataset():
  graph = import_graph()
  for name in graph:
    if _in(name, ('score_sde.sde_lib', 'score_sde.likelihood', 'score_sde.sampling')):
      assert not {t for t in graph[name] if _in(t, ('score_sde.models', 'score_sde.datasets'))}, name
    if _in(name, ('score_sde.models',)):
      assert 'score_sde.datasets' not in graph[name], name


def top_level_imports(path):
  """The score_sde modules a file imports when it is loaded (module level, not inside functions)."""
  found = set()
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith('score_sde'))
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('score_sde'):
      found.add(node.module)
  return found


def test_leaves_import_nothing_of_the_package_at_load_time():
  for leaf in LEAVES:
    path = PACKAGE / (leaf.split('.')[-1] + '.py')
    assert top_level_imports(path) == set(), (leaf, top_level_imports(path))


def test_no_two_modules_differ_only_by_a_suffix():
    """evaluate/evaluation, layers/layerspp: one name must not be the start of another in the same package."""
    stems = {}
    for path in PACKAGE.rglob('*.py'):
      stems.setdefault(path.parent, []).append(path.stem)
    for folder, names in stems.items():
      for a in names:
        for b in names:
          assert a == b or not b.startswith(a) or a.startswith('_'), (folder, a, b)
