"""The AMTRON simulator.

- :mod:`.model`: the wallbox as pure physics on an injected clock (``AmtronModel``).
- :mod:`.membus`: ``ModelBus``, the Bus protocol straight onto models (fake-clock tests).
- :mod:`.server`: ``SimulatorServer``, a real pymodbus RTU server over TCP or a pty, with faults.
- :mod:`.pty`: the in-process virtual serial cable.
- :mod:`.cli`: ``surplus sim``.
"""
