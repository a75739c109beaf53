"""Tensors of a TorchScript (or torch.save zip) file, read with numpy and without torch.

The file is a zip: `<root>/data.pkl` pickles the module tree, whose tensors point at raw little-endian storages
`<root>/data/<key>`. A restricted unpickler resolves only these names and refuses every other global, so no code
from the file ever runs:
  torch._utils._rebuild_tensor_v2     -> a view record (storage, offset, size, stride), bounds-checked
  torch.<Type>Storage                  -> a dtype marker for the persistent id ('storage', type, key, location, n)
  collections.OrderedDict, torch.jit._pickle.build_intlist -> dict, list (TorchScript's hooks and int lists)
  __torch__.<module path>.<Class>      -> an inert record of the attributes given to __setstate__
"""
import pickle
import re
import zipfile

import numpy as np

STORAGE_DTYPES = {'FloatStorage': '<f4', 'DoubleStorage': '<f8', 'HalfStorage': '<f2', 'LongStorage': '<i8',
                  'IntStorage': '<i4', 'ShortStorage': '<i2', 'CharStorage': 'i1', 'ByteStorage': 'u1',
                  'BoolStorage': '?'}
_TORCHSCRIPT_CLASS = re.compile(r'__torch__(\.[A-Za-z_]\w*)+')


class TorchScriptError(ValueError):
  """Not a readable TorchScript zip, or its pickle names a global outside the allowed set."""


class _Module:
  """A TorchScript object: just the attributes it was pickled with."""
  type_name = '?'

  def __setstate__(self, state):
    if not isinstance(state, dict):
      raise TorchScriptError(f'{self.type_name} has a non-dict state')
    self.state = state


class _StorageType(str):
  """The dtype of a storage, as named in the persistent id."""


class _View(tuple):
  """(storage_key, offset, size, stride) of one tensor; turned into an array once storages are read."""


def _rebuild_tensor_v2(storage, offset, size, stride, *unused):
  del unused  # requires_grad, backward hooks, metadata
  if not isinstance(storage, tuple) or not all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride)):
    raise TorchScriptError('malformed tensor record')
  if len(size) != len(stride):
    raise TorchScriptError('tensor size and stride differ in rank')
  return _View((storage, offset, tuple(size), tuple(stride)))


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, storage_keys):
    super().__init__(file)
    self.storage_keys = storage_keys

  def find_class(self, module, name):
    if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
      return _rebuild_tensor_v2
    if module == 'torch' and name in STORAGE_DTYPES:
      return _StorageType(name)
    if (module, name) == ('collections', 'OrderedDict'):
      return dict
    if (module, name) == ('torch.jit._pickle', 'build_intlist'):
      return list
    if _TORCHSCRIPT_CLASS.fullmatch(f'{module}.{name}'):
      return type(name, (_Module,), {'type_name': f'{module}.{name}'})
    raise TorchScriptError(f'refusing the pickled global {module}.{name}')

  def persistent_load(self, pid):
    ok = (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage' and isinstance(pid[1], _StorageType)
          and pid[2] in self.storage_keys and isinstance(pid[4], int))
    if not ok:
      raise TorchScriptError(f'unexpected persistent id {str(pid)[:80]}')
    return (str(pid[1]), pid[2], pid[4])  # (type, key, numel)


def _root(names):
  roots = [n[:-len('data.pkl')] for n in names if n.endswith('data.pkl') and n.count('/') == 1]
  if len(roots) != 1:
    raise TorchScriptError('not a TorchScript zip: expected exactly one <root>/data.pkl')
  return roots[0]


def _walk(obj, prefix, out):
  if isinstance(obj, _View):
    out[prefix] = obj
  elif isinstance(obj, _Module):
    _walk(getattr(obj, 'state', {}), prefix, out)
  elif isinstance(obj, dict):
    for k, v in obj.items():
      if isinstance(k, str):
        _walk(v, f'{prefix}.{k}' if prefix else k, out)


def _views(archive):
  root = _root(archive.namelist())
  keys = {n[len(root) + len('data/'):] for n in archive.namelist() if n.startswith(root + 'data/')}
  with archive.open(root + 'data.pkl') as f:
    try:
      tree = _Unpickler(f, keys).load()
    except TorchScriptError:
      raise
    except Exception as error:  # a malformed pickle: refuse it in one line
      raise TorchScriptError(f'cannot read the pickle: {type(error).__name__}: {error}') from None
  views = {}
  _walk(tree, '', views)
  return root, views


def _open(path):
  try:
    return zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as error:
    raise TorchScriptError(f'{path} is not a readable TorchScript zip ({error})') from None


def tensor_shapes(path):
  """{dotted name: shape} of every tensor, from the pickle alone (no storage is read)."""
  with _open(path) as archive:
    return {name: view[2] for name, view in _views(archive)[1].items()}


def read_tensors(path):
  """{dotted name: numpy array} of every tensor in the file, e.g. 'net.layers.conv.weight'."""
  with _open(path) as archive:
    root, views = _views(archive)
    storages, out = {}, {}
    for name, ((kind, key, numel), offset, size, stride) in views.items():
      if key not in storages:
        dtype = np.dtype(STORAGE_DTYPES[kind])
        raw = archive.read(f'{root}data/{key}')
        if len(raw) != numel * dtype.itemsize:
          raise TorchScriptError(f'storage {key} holds {len(raw)} bytes, expected {numel} x {dtype.itemsize}')
        storages[key] = np.frombuffer(raw, dtype)
      flat = storages[key]
      last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
      if last >= len(flat):
        raise TorchScriptError(f'tensor {name} reaches past its storage')
      item = flat.itemsize
      view = np.lib.stride_tricks.as_strided(flat[offset:], size, [s * item for s in stride], writeable=False)
      out[name] = np.array(view)  # a copy: native layout, owns its memory
  return out
