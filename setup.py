"""metarppg_jax: Meta-rPPG in JAX/Flax."""

import setuptools

INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",  # compile_options: XLA:CPU fields of jaxlib 0.10.2
    "flax>=0.12,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12,<0.13",
    "ml-collections>=1.0,<2",
    "numpy>=2.0,<3",
    "scipy>=1.13,<2",
    "tensorflow-datasets>=4.9.10,<5",
    "array_record>=0.8,<0.9",
    "grain>=0.2.18,<0.3",
    "absl-py>=2.0",
    "av>=14",
    "opencv-python-headless>=4.9,<5",  # OpenCV 5 dropped cv2.CascadeClassifier
    "pyedflib>=0.1.38",
    "scikit-image>=0.24",
    "matplotlib>=3.8",
    "tensorboardX>=2.6",
    "tqdm>=4.66",
    "neurokit2>=0.2.13,<0.3",  # beats and HRV of the live stream (hrv.py)
]

EXTRAS = {
    "cuda12": ["jax[cuda12]>=0.10.2,<0.11"],
    "test": [
        "pytest>=8",
        "pytest-timeout>=2.3",
        "pytest-xdist>=3.5",
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6.29",
    ],
    # Only to read/write the original release's .pth checkpoints (weights_only=True).
    # Pin it (torch==2.13.0 is a CPU wheel); a loose range pulls a multi-GB CUDA build.
    "torch": ["torch==2.13.0"],
}

setuptools.setup(
    name="metarppg_jax",
    version="0.1.0",
    description="Meta-rPPG (ECCV 2020): transductive meta-learning for remote heart rate, in JAX",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["metarppg_jax", "metarppg_jax.*"]),
    package_data={"metarppg_jax": ["py.typed", "weights/*"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    license="MIT",
)
