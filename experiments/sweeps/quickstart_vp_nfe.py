"""The VP quickstart (runs/quickstart, trained with the official DSM loss) at the settings of quickstart_edm_nfe.py.

  python experiments/sweep.py --sweep experiments/sweeps/quickstart_vp_nfe.py
"""
from experiments.sweeps.quickstart_edm_nfe import nfe_sweep


def get_sweep():
  return nfe_sweep('configs/quickstart.py', 'runs/quickstart')
