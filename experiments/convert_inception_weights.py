"""pytorch-fid's FID Inception weights (.pth) -> an .npz of numpy arrays under the PyTorch names.

  python experiments/convert_inception_weights.py --pth pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

--download first fetches the .pth from pytorch-fid's release (urllib) when --pth does not exist. Needs torch
(this script only); score_sde.inception.load_inception(out) then reads the .npz without it. Exit code 2 with
one line when torch or the .pth is missing.
"""
import argparse
import os
import sys
import urllib.request

import numpy as np

URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
       'pt_inception-2015-12-05-6726825d.pth')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--pth', default='pt_inception-2015-12-05-6726825d.pth', help='pytorch-fid weights file')
  parser.add_argument('--out', default='inception_fid.npz', help='output .npz')
  parser.add_argument('--download', action='store_true', help=f'fetch --pth from {URL} if it is absent')
  args = parser.parse_args(argv)
  try:
    import torch
  except ImportError:
    print('error: converting the .pth needs PyTorch (pip install torch), which is not installed', file=sys.stderr)
    return 2
  if not os.path.exists(args.pth):
    if not args.download:
      print(f'error: {args.pth} not found; pass --download to fetch it from {URL}', file=sys.stderr)
      return 2
    print(f'downloading {URL} -> {args.pth}')
    urllib.request.urlretrieve(URL, args.pth)
  state_dict = torch.load(args.pth, map_location='cpu', weights_only=True)
  arrays = {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax

  from score_sde import inception
  variables = inception.params_from_torch_state_dict(arrays)  # ValueError if it is not the FID Inception
  np.savez(args.out, **arrays)
  count = sum(v.size for v in jax.tree_util.tree_leaves(variables['params']))
  print(f'wrote {args.out}: {len(arrays)} arrays, {count:,} trainable parameters')
  return 0


if __name__ == '__main__':
  sys.exit(main())
