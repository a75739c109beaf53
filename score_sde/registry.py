"""One kind of table for everything a user picks by name: SDEs, models, samplers, predictors, correctors,
datasets, feature extractors, conditions, run modes.

    SDES = Registry('training.sde')

    @SDES.register('vpsde')
    class VPSDE(SDE): ...

    SDES.get('vpsd')   # ValueError: training.sde='vpsd' is unknown; known: [...] (did you mean 'vpsde'?)
    SDES.names()       # sorted, as the config table and the messages show them

`field` names the config field (or flag) a user sets, so that every "unknown name" message says what to
change. Names match without regard to case unless `case_sensitive`. A registration may carry keyword facts
about the entry (a predictor's score evaluations per step, say), read back with `info(name)`.
This module imports nothing of the package, so any module may hold a registry.
"""
import difflib

_DECORATE = object()


class Registry:
  """name -> object, with `register`, `get` (one-line error with "did you mean"), `names` and `info`."""

  def __init__(self, field, case_sensitive=False):
    self.field = field
    self.case_sensitive = case_sensitive
    self._entries = {}
    self._info = {}

  def _key(self, name):
    return name if self.case_sensitive or not isinstance(name, str) else name.lower()

  def register(self, name, obj=_DECORATE, **info):
    """Registers `obj` (None too) under `name`; without `obj`, a decorator that does so and returns what it
    decorates."""
    def add(obj):
      key = self._key(name)
      if key in self._entries and self._entries[key][1] is not obj:
        raise ValueError(f'{self.field}: {name!r} is registered twice.')
      self._entries[key] = (name, obj)
      self._info[key] = info
      return obj
    return add if obj is _DECORATE else add(obj)

  def unregister(self, name):
    """Removes `name` (a plug-in's clean-up; tests use it to leave the table as they found it)."""
    self._entries.pop(self._key(name), None)
    self._info.pop(self._key(name), None)

  def __contains__(self, name):
    return self._key(name) in self._entries

  def names(self):
    """The registered names as they were registered, sorted."""
    return sorted(name for name, _ in self._entries.values())

  def problem(self, name):
    """None when `name` is registered, else why not: "is unknown; known: [...] (did you mean 'x'?)"."""
    if name in self:
      return None
    close = difflib.get_close_matches(str(self._key(name)), [self._key(n) for n in self.names()], n=1)
    hint = f" (did you mean {self._entries[close[0]][0]!r}?)" if close else ''
    return f'is unknown; known: {self.names()}{hint}'

  def get(self, name):
    problem = self.problem(name)
    if problem:
      raise ValueError(f'{self.field}={name!r} {problem}.')
    return self._entries[self._key(name)][1]

  def info(self, name):
    """The keyword facts given at registration."""
    self.get(name)
    return self._info[self._key(name)]

  def items(self):
    return [(name, obj) for name, obj in sorted(self._entries.values(), key=lambda entry: entry[0])]
