"""The ``pytest-fakemachine`` command: ``main`` (run, doctor), its arguments,
its streams, and the doctor."""
