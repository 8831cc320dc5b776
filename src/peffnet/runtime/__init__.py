"""What training and measuring share, below both (docs/architecture.md): the one training step
(:mod:`~peffnet.runtime.step`), the paper's optimizer (:mod:`~peffnet.runtime.optim`), Mixup + CutMix
(:mod:`~peffnet.runtime.mixing`) and the device helpers (:mod:`~peffnet.runtime.device`: its name, peak memory).
A benchmark's figure is then the figure of the step that trains."""
