"""What nas ships for a network (the torch.export program and its AOTInductor CPU package),
and the latency that shipped file costs where it runs."""
