"""localml: run and debug an Azure ML online deployment on your own machine, driven by doit."""

__version__ = "0.1.0"
