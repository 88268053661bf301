"""The runtime: model assembly, the step loop, training, losses, layers, kernels, run
directories and the data cache. Imports the contract (``ponderkit``'s root); never the lab."""
