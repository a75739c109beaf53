"""What a run does: `run.py --mode` dispatches through `modes.MODES` to the train loop (`train`), eval mode
(`evaluate`), sampling and likelihood (`modes`), and controllable sampling (`conditional_sampling`); around
them sit checkpoints, config validation, the workdir lock, the run's outputs and its pre-emption notices.

Nothing in the math (`sde_lib`, `sampling`, `likelihood`, `losses`, `controllable`, `models`) imports from here.
"""
