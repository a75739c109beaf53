"""pytorch-fid's FID Inception weights (.pth) -> an .npz of numpy arrays under the PyTorch names.

  python experiments/convert_inception_weights.py --pth pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

--download first fetches the .pth from pytorch-fid's release (urllib) when --pth does not exist. Needs torch
(this script only); score_sde.metrics.inception.load_inception(out) then reads the .npz without it. Exit code 2 with
one line when torch or the .pth is missing, or when the .pth's sha256 does not start with the hash in its
release file name (torch.hub's convention; --allow_hash_mismatch converts it anyway, with a warning).
"""
import argparse
import os
import re
import sys
import urllib.request

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from score_sde.metrics.inception import WEIGHTS_URL, file_digest, params_from_torch_state_dict

FILE_NAME = WEIGHTS_URL.rsplit('/', 1)[1]
SHA256_PREFIX = re.search(r'-([0-9a-f]+)\.pth$', FILE_NAME).group(1)  # '6726825d', as torch.hub checks it


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--pth', default=FILE_NAME, help='pytorch-fid weights file')
  parser.add_argument('--out', default='inception_fid.npz', help='output .npz')
  parser.add_argument('--download', action='store_true', help=f'fetch --pth from {WEIGHTS_URL} if it is absent')
  parser.add_argument('--allow_hash_mismatch', action='store_true',
                      help=f'convert even if the sha256 does not start with {SHA256_PREFIX}')
  args = parser.parse_args(argv)
  try:
    import torch
  except ImportError:
    print('error: converting the .pth needs PyTorch (pip install torch), which is not installed', file=sys.stderr)
    return 2
  if not os.path.exists(args.pth):
    if not args.download:
      print(f'error: {args.pth} not found; pass --download to fetch it from {WEIGHTS_URL}', file=sys.stderr)
      return 2
    print(f'downloading {WEIGHTS_URL} -> {args.pth}')
    urllib.request.urlretrieve(WEIGHTS_URL, args.pth)
  digest = file_digest(args.pth, 'sha256')
  if not digest.startswith(SHA256_PREFIX):
    message = f'{args.pth} has sha256 {digest[:16]}..., not {SHA256_PREFIX}... as {FILE_NAME} has'
    if not args.allow_hash_mismatch:
      print(f'error: {message}; re-download it or pass --allow_hash_mismatch', file=sys.stderr)
      return 2
    print(f'warning: {message}; converting anyway (--allow_hash_mismatch)', file=sys.stderr)
  state_dict = torch.load(args.pth, map_location='cpu', weights_only=True)
  arrays = {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
  variables = params_from_torch_state_dict(arrays)  # ValueError if it is not the FID Inception
  np.savez(args.out, **arrays)
  count = sum(v.size for v in jax.tree_util.tree_leaves(variables['params']))
  print(f'wrote {args.out}: {len(arrays)} arrays, {count:,} trainable parameters')
  return 0


if __name__ == '__main__':
  sys.exit(main())
