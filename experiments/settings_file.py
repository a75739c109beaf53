"""A python settings file (a sweep, a launcher config): the function it defines, or an error in one line."""
import os
import runpy


def function_of(path, name, what, error, hint=''):
  """`name` as defined by the python file `path`; `error` (an exception class) saying what is missing otherwise."""
  if not os.path.exists(path):
    raise error(f'no {what} {path}{hint}')
  found = runpy.run_path(str(path)).get(name)
  if found is None:
    raise error(f'{path} has no {name}()')
  return found
