"""The architecture: what one DenseNet is (config), which ones a study may sample (space),
the network itself (model), and what it costs, counted without running it (macs)."""
