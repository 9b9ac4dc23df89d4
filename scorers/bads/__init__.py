"""BADS, the ``bads`` scorer (:mod:`.scorer`, for causal LMs), and its internals: the SGLD
sampler of parameters and data weights with its checks (:mod:`.sampler`) and its driver for
torch classifiers (:mod:`.classifier`, used by the benchmark and the tests)."""
