"""The simulated world and its day blocks of traffic, driven by `fraudapp.generator`."""
