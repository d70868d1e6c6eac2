"""Marked tests on the host: the session's hooks (``host``), which tests share
a guest (``dispatch``, ``markers``), a guest run and its events, booting
ahead, the spec the guest is given, and report (de)serialization.
"""
