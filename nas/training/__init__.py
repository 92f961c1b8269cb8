"""Training one architecture: the train budget, one step (eager or a CUDA graph), the fit,
the GPU's rules, and the costs measured by running the network (latency, memory)."""
