"""The images a study searches on: the five layouts read (formats, decode), split,
fingerprinted, put on the device and augmented (dataset)."""
