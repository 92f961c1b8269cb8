"""The architecture: what one DenseNet is (config), which ones a study may sample (space),
the network itself (model)."""
