"""Controllable generation measured on a trained quickstart run (Section 5 of Song et al. 2021).

* Class-conditional digits: the unconditional score plus guidance_scale * grad log p_t(y | x) of the shipped
  noise-conditional digits classifier; the (clean) digits classifier judges every sample: accuracy per class.
  The same samples without guidance (scale 0) give the chance level of each class.
* Inpainting: held-out digits (the quickstart's test split) with a mask; the mean squared error of the filled
  region against the originals, in [0, 1] pixel units, and the same number for a random training digit.

Writes docs/controllable_class.png (a row per class), docs/controllable_inpaint_<mask>.png (original, mask,
input, completions) and docs/controllable_quickstart.{json,md}.

  python experiments/controllable_quickstart.py [--workdir runs/quickstart] [--out docs]

About 5 CPU-minutes with the defaults (1000 steps, reverse diffusion + Langevin; --corrector none halves it).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from score_sde import models, sde_lib
from score_sde.runner import checkpoints, conditional_sampling, run_state


def load_run(workdir, num_scales=0):
  config = checkpoints.load_config(workdir)
  state = checkpoints.restore(workdir, run_state.abstract_train_state(config))
  config.model.num_scales = num_scales or config.model.num_scales  # a continuous-time model: any N
  if state is None:
    raise SystemExit(f'no checkpoint in {workdir}; train the quickstart first '
                     '(python run.py --config configs/quickstart.py --workdir runs/quickstart --mode train).')
  sde, model = sde_lib.get_sde(config), models.get_model(config)
  score_fn = models.get_score_fn(sde, model, {'params': state.params_ema}, continuous=config.training.continuous)
  return config, state, sde, score_fn


def class_conditional(config, sde, score_fn, args):
  config.sampling.update(condition='class', classifier='noisy_digits', labels='', num_completions=args.per_class,
                         guidance_scale=args.guidance_scale, corrector=args.corrector)
  rng = jax.random.PRNGKey(args.seed)
  rows, _, guided = conditional_sampling.class_conditional(config, sde, score_fn, rng)
  results = {'guided': guided}
  if args.unguided:  # the same noise without guidance: how often each class turns up by chance
    config.sampling.guidance_scale = 0.
    results['unguided (scale 0)'] = conditional_sampling.class_conditional(config, sde, score_fn, rng)[2]
  return rows, results


def inpainting(config, sde, score_fn, args, mask):
  config.sampling.update(condition='inpaint', classifier='', mask=mask, mask_fraction=args.mask_fraction,
                         num_inputs=args.num_inputs, num_completions=args.completions, corrector=args.corrector)
  rows, _, metrics = conditional_sampling.inpaint(config, sde, score_fn, jax.random.PRNGKey(args.seed + 1))
  return rows, metrics


def markdown(results, args, run_line):
  lines = [f'# Controllable generation on the quickstart ({run_line})', '',
           f'Class-conditional: guidance scale {args.guidance_scale}, {args.per_class} samples per class, '
           f'predictor {results["sampler"]["predictor"]}, corrector {args.corrector}; '
           'judged by the clean digits classifier.', '',
           '| class | ' + ' | '.join(str(c) for c in range(10)) + ' | mean |',
           '|---' * 12 + '|']
  for name, metrics in results['class'].items():
    per = metrics['accuracy_per_class']
    cells = ' | '.join(f'{per[str(c)]:.2f}' for c in range(10))
    lines.append(f'| {name} | {cells} | {metrics["accuracy"]:.3f} |')
  lines += ['', f'Inpainting: {args.num_inputs} held-out digits x {args.completions} completions; '
            'MSE of the filled region in [0, 1] pixel units.', '',
            '| mask | MSE completions | MSE random training digit |', '|---|---|---|']
  for mask, metrics in results['inpaint'].items():
    lines.append(f'| {mask} | {metrics["mse_filled_region"]:.4f} | {metrics["mse_random_training_image"]:.4f} |')
  return '\n'.join(lines) + '\n'


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', default='runs/quickstart')
  parser.add_argument('--out', default='docs')
  parser.add_argument('--guidance_scale', type=float, default=3.)
  parser.add_argument('--per_class', type=int, default=20)
  parser.add_argument('--corrector', default='langevin', help="PC corrector ('none', the quickstart's own, is faster)")
  parser.add_argument('--num_inputs', type=int, default=32)
  parser.add_argument('--completions', type=int, default=2)
  parser.add_argument('--masks', default='half,box')
  parser.add_argument('--mask_fraction', type=float, default=0.5)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--unguided', action='store_true', help='also sample without guidance (chance levels)')
  parser.add_argument('--num_scales', type=int, default=0, help='SDE steps N of the samplers (0: the run\'s)')
  args = parser.parse_args()
  start = time.perf_counter()
  config, state, sde, score_fn = load_run(args.workdir, args.num_scales)
  os.makedirs(args.out, exist_ok=True)
  results = {'workdir': args.workdir, 'step': int(state.step), 'args': vars(args),
             'sampler': {'method': config.sampling.method, 'predictor': config.sampling.predictor}}

  rows, results['class'] = class_conditional(config, sde, score_fn, args)
  conditional_sampling.save_grid([r[:16] for r in rows], os.path.join(args.out, 'controllable_class.png'))
  print('class-conditional:', json.dumps(results['class']), flush=True)

  results['inpaint'] = {}
  for mask in args.masks.split(','):
    rows, results['inpaint'][mask] = inpainting(config, sde, score_fn, args, mask)
    conditional_sampling.save_grid(rows[:8], os.path.join(args.out, f'controllable_inpaint_{mask}.png'))
    print(f'inpainting ({mask}):', json.dumps(results['inpaint'][mask]), flush=True)

  results['seconds'] = round(time.perf_counter() - start, 1)
  with open(os.path.join(args.out, 'controllable_quickstart.json'), 'w') as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(args.out, 'controllable_quickstart.md'), 'w') as f:
    f.write(markdown(results, args, f'{args.workdir}, step {int(state.step)}'))
  print(f'wrote {args.out}/controllable_quickstart.{{json,md}} and the grids in {results["seconds"]} s')


if __name__ == '__main__':
  main()
