"""Official checkpoints -> our flax variables.

* `from_official_pytorch(config, state_dict)`: yang-song/score_sde_pytorch names.
  NCSN++/DDPM++/DDPM (`all_modules.<i>.<sub>.<leaf>`) map by position: our top-level
  submodules are created in the order of the official `all_modules` list (modules
  without parameters are absent on both sides). NCSN/NCSNv2 map by name (the original
  attribute names, e.g. `res2.0.conv2.conv.weight` -> res2_0/conv2/conv/kernel).
  Layouts: conv OIHW -> HWIO, Linear (out, in) -> (in, out), GroupNorm weight -> scale,
  Embedding weight -> embedding; NIN W/b, Fourier W and InstanceNorm++ alpha/gamma/beta as is.
* `from_official_flax(config, path_or_bytes)`: yang-song/score_sde msgpack checkpoints
  (NCSN++/DDPM++/DDPM; our parameter names are theirs).
* `load_pth(path)`: a PyTorch checkpoint or state_dict as numpy arrays (needs torch).
"""
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.models import utils

_BUFFERS = ('sigmas',)
_POSITIONAL_MODELS = ('ncsnpp', 'ddpm')
_NAMED_MODELS = ('ncsn', 'ncsnv2_64', 'ncsnv2_128', 'ncsnv2_256')


def read_flax_checkpoint(path_or_bytes):
  """An official Flax checkpoint's tree: from a msgpack file, its bytes, or an already restored dict."""
  if isinstance(path_or_bytes, dict):
    return path_or_bytes
  if isinstance(path_or_bytes, (str, os.PathLike)):
    with open(path_or_bytes, 'rb') as f:
      path_or_bytes = f.read()
  return flax.serialization.msgpack_restore(path_or_bytes)


def abstract_variables(config, batch_size=1):
  """(shape tree of model.init, names of the top-level param modules in creation order)."""
  model = utils.get_model(config)
  size, channels = config.data.image_size, config.data.num_channels
  order = []

  def init(rng):
    x = jnp.zeros((batch_size, size, size, channels), jnp.float32)
    t = jnp.ones((batch_size,), jnp.float32)
    variables = model.init({'params': rng, 'dropout': rng}, x, t, train=False)
    order.extend(variables['params'].keys())
    return variables

  return jax.eval_shape(init, jax.random.PRNGKey(0)), order


def count_params(tree):
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))


def _to_numpy(value):
  if hasattr(value, 'detach'):  # torch.Tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, dtype=np.float32)


def _strip_prefix(state_dict):
  return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state_dict.items()}


def _convert_leaf(leaf, value, target_leaves):
  """A torch leaf -> (our leaf name, array in our layout)."""
  if leaf == 'weight':
    if value.ndim == 4:  # conv OIHW -> HWIO
      return ('kernel' if 'kernel' in target_leaves else 'weight'), value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
      if 'embedding' in target_leaves:
        return 'embedding', value
      return 'kernel', value.T
    return 'scale', value  # GroupNorm
  return leaf, value


def _get(tree, path):
  for p in path:
    if not isinstance(tree, dict) or p not in tree:
      return None
    tree = tree[p]
  return tree


def _set(tree, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _flatten(tree, prefix=()):
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for k, v in tree.items():
    out.update(_flatten(v, prefix + (k,)))
  return out


def _fill(shapes, items, unexpected):
  """items: list of (torch name, our module path, torch leaf, array) -> our params, or ValueError."""
  params, problems = {}, []
  for name, path, leaf, value in items:
    target = _get(shapes, path)
    if not isinstance(target, dict):
      unexpected.append(name)
      continue
    ours, array = _convert_leaf(leaf, value, target)
    if ours not in target:
      unexpected.append(name)
      continue
    if tuple(target[ours].shape) != array.shape:
      problems.append(f'{name} {array.shape} -> {"/".join(path + (ours,))} expects {tuple(target[ours].shape)}')
      continue
    _set(params, path + (ours,), jnp.asarray(array))
  missing = sorted('/'.join(p) for p in _flatten(shapes) if _get(params, p) is None)
  if problems or unexpected or missing:
    lines = ['The checkpoint does not fit this config:']
    lines += [f'  shape mismatch: {p}' for p in problems]
    lines += [f'  unexpected official parameter: {n}' for n in unexpected]
    lines += [f'  no official parameter for: {n}' for n in missing]
    raise ValueError('\n'.join(lines))
  return params


def _positional_items(config, state_dict, order):
  groups = {}
  unexpected = []
  for name, value in state_dict.items():
    parts = name.split('.')
    if parts[0] != 'all_modules' or len(parts) < 3 or not parts[1].isdigit():
      unexpected.append(name)
      continue
    if not config.model.conditional and 'Dense_0' in parts[2:-1]:
      continue  # the official PyTorch blocks create Dense_0 even when it is never used
    groups.setdefault(int(parts[1]), []).append((name, parts[2:], value))
  indices = sorted(groups)
  if len(indices) != len(order):
    official = [f'{i}: ' + ','.join('.'.join(r) for _, r, _ in groups[i]) for i in indices]
    raise ValueError(
        f'The checkpoint has {len(indices)} official modules with parameters but this config builds '
        f'{len(order)}.\n  official: ' + '\n            '.join(official) + '\n  ours: ' + ', '.join(order))
  items = [(name, (top,) + tuple(rest[:-1]), rest[-1], value)
           for index, top in zip(indices, order) for name, rest, value in groups[index]]
  return items, unexpected


def _named_items(state_dict):
  items = []
  for name, value in state_dict.items():
    path = []
    for part in name.split('.'):
      if part.isdigit() and path:
        path[-1] = f'{path[-1]}_{part}'  # ModuleList index: res1.0 -> res1_0
      else:
        path.append(part)
    items.append((name, tuple(path[:-1]), path[-1], value))
  return items, []


def from_official_pytorch(config, state_dict):
  """An official PyTorch state_dict (name -> tensor or array) -> {'params': ...} for our model."""
  name = config.model.name
  state_dict = {k: _to_numpy(v) for k, v in _strip_prefix(state_dict).items()
                if k not in _BUFFERS}
  shapes, order = abstract_variables(config)
  if name in _POSITIONAL_MODELS:
    items, unexpected = _positional_items(config, state_dict, order)
  elif name in _NAMED_MODELS:
    items, unexpected = _named_items(state_dict)
  else:
    raise ValueError(f'No official PyTorch mapping for model {name!r}; known: '
                     f'{sorted(_POSITIONAL_MODELS + _NAMED_MODELS)}.')
  return {'params': _fill(shapes['params'], items, unexpected)}


def _select_params(restored, use_ema):
  """The parameter tree inside an official Flax checkpoint (a State dict) or a bare tree."""
  if use_ema and 'params_ema' in restored:
    return restored['params_ema']
  if 'optimizer' in restored:
    return restored['optimizer']['target']
  if 'params' in restored:
    return restored['params']
  if 'params_ema' in restored:
    return restored['params_ema']
  return restored


def from_official_flax(config, path_or_bytes, use_ema=True):
  """An official score_sde (JAX) checkpoint file, its bytes, or a restored dict -> {'params': ...}.

  Takes `params_ema` when present and use_ema, else `optimizer.target` (the raw parameters).
  """
  name = config.model.name
  if name not in _POSITIONAL_MODELS:
    raise ValueError(
        f'from_official_flax supports {_POSITIONAL_MODELS}; the official JAX {name!r} is a different '
        'network from the original NCSN/NCSNv2 implemented here (use from_official_pytorch).')
  official = _flatten(_select_params(read_flax_checkpoint(path_or_bytes), use_ema))
  shapes = _flatten(abstract_variables(config)[0]['params'])
  problems = [f'  no official parameter for: {"/".join(p)}' for p in shapes if p not in official]
  problems += [f'  unexpected official parameter: {"/".join(p)}' for p in official if p not in shapes]
  problems += [f'  shape mismatch: {"/".join(p)} {np.shape(official[p])} vs {tuple(s.shape)}'
               for p, s in shapes.items() if p in official and np.shape(official[p]) != tuple(s.shape)]
  if problems:
    raise ValueError('The checkpoint does not fit this config:\n' + '\n'.join(problems))
  params = {}
  for p in shapes:
    _set(params, p, jnp.asarray(np.asarray(official[p], np.float32)))
  return {'params': params}


def _is_frozen(name, value):
  """Parameters without gradient in the official models (not tracked by the EMA): Fourier W."""
  return name.endswith('.W') and value.ndim == 1


def apply_ema(state_dict, shadow_params):
  """Replaces the trainable parameters of a state_dict by the EMA shadow parameters.

  The official ExponentialMovingAverage keeps one tensor per `requires_grad` parameter,
  in `model.parameters()` order, i.e. state_dict order without buffers and Fourier W.
  """
  state_dict = _strip_prefix(state_dict)
  names = [k for k, v in state_dict.items() if k not in _BUFFERS and not _is_frozen(k, _to_numpy(v))]
  if len(names) != len(shadow_params):
    raise ValueError(f'EMA has {len(shadow_params)} tensors but the model has {len(names)} trainable parameters.')
  out = dict(state_dict)
  for k, v in zip(names, shadow_params):
    if tuple(np.shape(_to_numpy(v))) != tuple(np.shape(_to_numpy(state_dict[k]))):
      raise ValueError(f'EMA tensor for {k} has shape {np.shape(v)}, the parameter {np.shape(state_dict[k])}.')
    out[k] = v
  return out


def load_pth(path, use_ema=True):
  """A .pth file -> state_dict of numpy arrays.

  Accepts a bare state_dict or an official checkpoint {'model', 'ema', 'optimizer', 'step'}
  (with use_ema, the EMA weights replace the raw ones, as the official evaluation uses).
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError('load_pth needs PyTorch (pip install torch); alternatively pass a state_dict '
                      'of numpy arrays to from_official_pytorch.') from e
  checkpoint = torch.load(path, map_location='cpu', weights_only=True)
  if isinstance(checkpoint, dict) and 'model' in checkpoint:  # score_sde_pytorch
    state_dict = checkpoint['model']
    if use_ema and 'ema' in checkpoint:
      state_dict = apply_ema(state_dict, checkpoint['ema']['shadow_params'])
  elif isinstance(checkpoint, (list, tuple)):  # ermongroup/ncsn, ncsnv2: [model, optimizer, epoch, step(, ema)]
    state_dict = dict(checkpoint[0])
    if use_ema and len(checkpoint) > 4 and isinstance(checkpoint[-1], dict):
      state_dict.update(checkpoint[-1])  # EMAHelper.shadow: parameter name -> averaged tensor
  else:
    state_dict = checkpoint
  return {k: _to_numpy(v) for k, v in _strip_prefix(state_dict).items()}
