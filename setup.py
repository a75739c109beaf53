from setuptools import find_packages, setup

setup(
    name='score_sde',
    version='0.1.0',
    description='Score-based generative modeling through SDEs (Song et al., ICLR 2021), in modern JAX.',
    packages=find_packages(include=['score_sde', 'score_sde.*']),
    package_data={'score_sde': ['assets/*.npz']},  # the digits classifier's weights
    python_requires='>=3.10',
    install_requires=[
        'jax>=0.10.2,<0.11',
        'flax>=0.12.8,<0.13',
        'optax>=0.2.8,<0.3',
        'orbax-checkpoint>=0.12.8,<0.13',
        'ml-collections>=1.1.0,<1.2',
        'diffrax>=0.7.2,<0.8',
        'equinox>=0.13,<0.14',
        'numpy>=2.0',
        'scipy>=1.11',
        'tensorflow-cpu>=2.21,<2.22',
        'tensorflow-datasets>=4.9.10,<4.10',
        'importlib_resources',  # tensorflow-datasets needs it but does not declare it
        'tensorboard>=2.21,<2.22',
        'clu>=0.0.12',
        'tqdm>=4.66',
        'pillow>=10',
        'matplotlib>=3.8',
        'scikit-learn>=1.4',
        'absl-py>=2.0',
        'submitit>=1.5.4,<1.6',  # experiments/sweep.py --launcher local|slurm
    ],
    extras_require={'test': ['pytest>=8']},
)
