"""hfcn-bench: the Hybrid Feature Cropping Network (Song et al., IEEE Access 2020) for thyroid
nodule ultrasound classification, with a fused crop + resize op and a benchmark harness."""

__version__ = "0.1.0"
