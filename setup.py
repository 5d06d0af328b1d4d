"""moe-jax: mixture-of-experts parameter-efficient fine-tuning in JAX/Flax."""
import setuptools

# Known-good pins for CPU/TPU hosts (see README "Environment").
RUNTIME = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "gin-config==0.5.0",
    "seqio==0.0.20",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "sentencepiece==0.2.3",
    "numpy==2.4.6",
    "protobuf==7.36.2",
    "safetensors==0.8.0",
    # promptsource 0.2.3's own needs (it is installed with --no-deps, see Makefile)
    "pandas",
    "pyyaml",
    "jinja2",
    "setuptools<81",  # promptsource imports pkg_resources
    "matplotlib",  # expert-probability plots at eval
    "tensorboard",  # tf.summary needs it
    "pyarrow==26.0.1",  # the parquet data source
]

# Reference implementations for parity tests (PyTorch CPU wheel: torch==2.13.0).
TEST = [
    "torch==2.13.0",
    "transformers==5.23.0",
    "peft",
    "pytest",
    "pytest-xdist==3.8.0",  # make test: two workers (most tests use one core)
    "datasets==5.2.0",  # the hf data source (optional at run time; its offline test)
]

# XLA:TPU ahead-of-time compilation on any host (python -m moe_jax.plan --topology=...),
# and the runtime on a TPU VM: jax's TPU extra brings libtpu (~680 MB) from the index.
TPU = ["jax[tpu]==0.10.2"]
# jax's CUDA plugin for an NVIDIA GPU host (make device-check installs it where nvidia-smi runs).
GPU = ["jax[cuda12]==0.10.2"]

setuptools.setup(
    name="moe-jax",
    version="0.1.0",
    description="Mixture-of-experts PEFT (MoV, MoLoRA, MOELoRA, MiLoRA, MoA) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["moe_jax", "moe_jax.*", "tasks", "tasks.*"]),
    python_requires=">=3.10",
    install_requires=RUNTIME,
    extras_require={"test": TEST, "tpu": TPU, "gpu": GPU},
    license="Apache-2.0",
)
