"""The module layout of ../shared/DESIGN.md: no import cycles, and the math imports no runner, model or dataset."""
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
  assert 'score_sde.train' in graph['score_sde.run_lib']
  assert find_cycle({'a': {'b'}, 'b': {'a'}}) == ['a', 'b', 'a']


def test_no_import_cycle():
  assert find_cycle(import_graph()) is None


def test_evaluate_does_not_import_the_training_loop():
  assert 'score_sde.train' not in import_graph()['score_sde.evaluate']


def test_the_math_imports_no_runner_model_or_dataset():
  graph = import_graph()
  forbidden = {'score_sde.train', 'score_sde.run_lib', 'score_sde.evaluate', 'score_sde.datasets',
               'score_sde.checkpoints', 'score_sde.models'}
  for name in graph:
    if name in ('score_sde.sde_lib', 'score_sde.likelihood') or name.startswith('score_sde.sampling'):
      assert not graph[name] & forbidden, (name, graph[name] & forbidden)
