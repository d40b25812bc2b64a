"""The paper protocol as stages: which generator's data trains the best recognizer, and how
far it is from real data (``synthface benchmark synthetic``, flow ``benchmark-synthetic``).

``config`` (config kind ``benchmark``), ``data`` (real data, equal-size subset, real +
synthetic), ``models`` (recognizers of one recipe, registered generators), ``generation``
(the synthetic sets through ``generate-synthetic``), ``evaluate`` (protocols, FRCSyn, gap
to real), ``variation`` (pose and age spread within identities), ``report`` and ``run``
(the stage graph). Import the modules directly; this package imports nothing.
"""
