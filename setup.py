"""coprop_jax: a JAX/Flax reimplementation of Co-Prop (audio-visual video segmentation)."""
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent

# Runtime dependencies. No TensorFlow: TFDS writes/reads ArrayRecord and grain reads it without TF.
INSTALL_REQUIRES = [
    "jax>=0.4.35",
    "flax>=0.10.0",          # Linen API
    "optax>=0.2.3",
    "orbax-checkpoint>=0.9.0",
    "tensorflow-datasets>=4.9.7",
    "array-record>=0.5.1",
    "grain>=0.2.6",
    "ml-collections>=0.1.1",
    "absl-py>=2.1.0",
    "numpy>=1.26",
    "Pillow>=10.0",
    "soundfile>=0.12.1",     # WAV I/O (libsndfile wheels)
    "safetensors>=0.4.3",    # checkpoint reading without a PyTorch model
    "ml-dtypes>=0.4.0",      # bfloat16 safetensors
    "tqdm>=4.66",
    "importlib_resources>=6.0",  # TFDS without TensorFlow needs it
    "tensorboardX>=2.6",     # TensorBoard event files without TensorFlow (trainer)
    "av>=12.0",              # PyAV: video decoding/encoding with its own FFmpeg (predict)
    "soxr>=0.3",             # audio resampling to 16 kHz (predict)
    "matplotlib>=3.7",       # overlay / timeline pictures (demo, predict, notebooks)
]

EXTRAS_REQUIRE = {
    # Qwen audio-LLM control points (RCPG) and Hugging Face checkpoint conversion.
    "rcpg": ["transformers>=4.45"],
    # Tests: PyTorch CPU references for numerical parity. torch is pinned so that pip takes the CPU
    # build; an unpinned torch pulls a multi-GB CUDA build.
    "test": [
        "pytest>=8.0",
        "pytest-xdist>=3.5",
        "transformers>=4.45",
        "torch==2.13.0",
        "torchvggish==0.2",
        "resampy>=0.4.2",
        "nbclient>=0.10",    # the test suite executes the notebooks
        "nbformat>=5.9",
        "ipykernel>=6.29",
    ],
}

setuptools.setup(
    name="coprop_jax",
    version="0.1.0",
    description="Co-Prop (Collaborative Hybrid Propagator) for audio-visual segmentation in JAX/Flax",
    long_description=(_HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["coprop_jax*", "configs*", "data_pipelines*"]),
    package_data={"coprop_jax": ["rcpg/templates/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
